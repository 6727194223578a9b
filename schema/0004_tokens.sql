-- vaultd schema 4: bearer tokens (ARCHITECTURE §5), for callers the kernel cannot tell
-- apart (a shared uid in containers). Only a keyed hash of each token is stored.
CREATE TABLE token (
    accessor        TEXT PRIMARY KEY,          -- public id: list, revoke, audit
    hash            BLOB NOT NULL UNIQUE,      -- HMAC(token key from the root key, token)
    client_id       INTEGER NOT NULL REFERENCES client (id) ON DELETE CASCADE,
    bind_uid        INTEGER,                   -- the caller must have this uid; NULL: any
    created_unix    INTEGER NOT NULL,
    expires_unix    INTEGER,                   -- NULL: no TTL
    idle_secs       INTEGER,                   -- refused after this long unused; NULL: no limit
    uses_left       INTEGER,                   -- NULL: unlimited
    last_used_unix  INTEGER,
    revoked_unix    INTEGER
) STRICT;

CREATE INDEX token_client ON token (client_id);
