-- vaultd schema 5: a client may also pin the SHA-256 of its executable.
ALTER TABLE client ADD COLUMN exe_sha256 TEXT;   -- lowercase hex; NULL: any content
