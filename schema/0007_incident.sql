-- vaultd schema 7: incidents (ARCHITECTURE §7).
-- Released migrations are never edited; add the next one instead.

-- One row per revoke-all. `report` is JSON: counts, the secrets that still need
-- rotation, provider hook outcomes. Names and numbers only, never a value.
-- A running vaultd watches MAX(id) to honour a revoke-all made offline.
CREATE TABLE incident (
    id            INTEGER PRIMARY KEY,
    started_unix  INTEGER NOT NULL,
    mode          TEXT NOT NULL CHECK (mode IN ('online', 'offline')),
    reason        TEXT NOT NULL,
    report        TEXT NOT NULL
) STRICT;
