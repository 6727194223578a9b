-- vaultd schema 3: clients and grants (ARCHITECTURE §5).

-- A client is a set of selectors; a caller matches when it has all of them.
CREATE TABLE client (
    id            INTEGER PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    uid           INTEGER NOT NULL,
    gid           INTEGER,            -- NULL: any group
    exe           TEXT,               -- NULL: any executable
    enabled       INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
    created_unix  INTEGER NOT NULL
) STRICT;

-- What a client may read: patterns over ENV/NAME, `*` matching any run of
-- characters ("prod/telegram", "prod/*", "*/openai").
CREATE TABLE client_grant (
    client_id     INTEGER NOT NULL REFERENCES client (id) ON DELETE CASCADE,
    pattern       TEXT NOT NULL,
    created_unix  INTEGER NOT NULL,
    PRIMARY KEY (client_id, pattern)
) STRICT;
