-- vaultd schema 11: the state vaultd acts on is authenticated under the root key
-- (vaultd/src/state/mac.rs; ARCHITECTURE.md "Integrity").

-- Each row's MAC over its table, identity and fields; a parent's (secret,
-- client) also covers its children's. NULL: never signed (a row vaultd did not
-- write, or one written offline, like an offline revoke-all's incident).
ALTER TABLE secret ADD COLUMN mac BLOB;
ALTER TABLE secret_version ADD COLUMN mac BLOB;
ALTER TABLE rotation ADD COLUMN mac BLOB;
ALTER TABLE client ADD COLUMN mac BLOB;
ALTER TABLE client_grant ADD COLUMN mac BLOB;
ALTER TABLE token ADD COLUMN mac BLOB;
ALTER TABLE incident ADD COLUMN mac BLOB;
ALTER TABLE key_term ADD COLUMN mac BLOB;

-- The root: a generation bumped by every change; for each top-level table a
-- MAC over the generation, its row count and a keyed sum of its rows (the sum
-- itself is never stored), concatenated in `tables`; and a MAC over both. A
-- whole row deleted, added or put back from an older copy breaks its table's.
CREATE TABLE state_root (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    generation  INTEGER NOT NULL,
    tables      BLOB NOT NULL,
    mac         BLOB NOT NULL
) STRICT;

-- The state generation the audit head was written at: the state cannot be put
-- back to an older generation without cutting the audit log to match.
ALTER TABLE audit_head ADD COLUMN state_generation INTEGER NOT NULL DEFAULT 0;

-- Integrity problems and their acknowledgements, found without a scan.
CREATE INDEX audit_integrity ON audit (seq)
    WHERE kind IN ('integrity.violation', 'audit.tampered', 'integrity.acknowledged');

-- Entries stored without a MAC (written while sealed, until the next unlock
-- chains them): an unlock finds any at or before the head, which only an edit
-- can make, without a scan.
CREATE INDEX audit_unsigned ON audit (seq) WHERE mac IS NULL;

-- What a grant allows: 'read' (the value, and its use through the broker) or
-- 'use' (through the broker only: the agent never holds the value).
ALTER TABLE client_grant ADD COLUMN kind TEXT NOT NULL DEFAULT 'read' CHECK (kind IN ('read', 'use'));

-- A client matched by its token only: once a uid has one, a request from that
-- uid without a token matches none of its clients.
ALTER TABLE client ADD COLUMN token_only INTEGER NOT NULL DEFAULT 0 CHECK (token_only IN (0, 1));

-- A token may be bound to an executable too (as its client's `--exe` is): the
-- caller must run that file (the same file, as vaultd's identity attests it).
ALTER TABLE token ADD COLUMN bind_exe TEXT;
