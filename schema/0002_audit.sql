-- vaultd schema 2: the tamper-evident audit log (ARCHITECTURE §8).

-- Append-only. mac = HMAC(audit key, previous mac || this entry's content), so an
-- edited, inserted, reordered or deleted entry breaks the chain at that point.
-- mac is NULL for entries written while sealed (no key in memory); they are
-- chained at the next unlock.
CREATE TABLE audit (
    seq          INTEGER PRIMARY KEY,
    time_unix_ms INTEGER NOT NULL,
    kind         TEXT NOT NULL,
    class        TEXT NOT NULL,
    outcome      TEXT NOT NULL,
    actor        TEXT NOT NULL,
    secret       TEXT NOT NULL DEFAULT '',
    detail       TEXT NOT NULL,
    mac          BLOB
) STRICT;

CREATE INDEX audit_time ON audit (time_unix_ms);

-- The newest chained entry, with its own MAC: deleting entries from the end of the
-- log (and rewriting this row to match) needs the key.
CREATE TABLE audit_head (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    seq       INTEGER NOT NULL,
    head_mac  BLOB NOT NULL
) STRICT;

-- Where the chain starts after retention pruned older entries: the last pruned
-- entry's seq and mac. Each pruning is itself an audit entry that names it.
CREATE TABLE audit_anchor (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    mac  BLOB NOT NULL
) STRICT;
