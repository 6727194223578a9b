-- vaultd schema 1: the key hierarchy and secrets (ARCHITECTURE §3, §4).
-- Released migrations are never edited; add 0002_… instead.

-- The vault header: one row once initialized. Nothing here is secret on its own:
-- the root key is sealed under the passphrase key derived with these parameters.
CREATE TABLE vault_header (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    kdf_memory_kib INTEGER NOT NULL,
    kdf_iterations INTEGER NOT NULL,
    kdf_parallelism INTEGER NOT NULL,
    kdf_salt      BLOB NOT NULL,
    wrapped_root  BLOB NOT NULL,
    created_unix  INTEGER NOT NULL
) STRICT;

-- Key terms, each sealed under the root key. New writes use the newest term.
CREATE TABLE key_term (
    term          INTEGER PRIMARY KEY CHECK (term > 0),
    wrapped_key   BLOB NOT NULL,
    created_unix  INTEGER NOT NULL
) STRICT;

CREATE TABLE secret (
    id              INTEGER PRIMARY KEY,
    env             TEXT NOT NULL,
    name            TEXT NOT NULL,
    provider        TEXT NOT NULL DEFAULT '',
    description     TEXT NOT NULL DEFAULT '',
    current_version INTEGER NOT NULL,
    created_unix    INTEGER NOT NULL,
    updated_unix    INTEGER NOT NULL,
    UNIQUE (env, name)
) STRICT;

CREATE TABLE secret_version (
    secret_id     INTEGER NOT NULL REFERENCES secret (id) ON DELETE CASCADE,
    version       INTEGER NOT NULL CHECK (version > 0),
    state         TEXT NOT NULL CHECK (state IN
                    ('pending', 'current', 'previous', 'retired', 'compromised', 'destroyed')),
    -- NULL once destroyed.
    ciphertext    BLOB,
    created_unix  INTEGER NOT NULL,
    -- End of the grace period for a previous version; NULL when none applies.
    expires_unix  INTEGER,
    PRIMARY KEY (secret_id, version)
) STRICT;
