-- vaultd schema 8: key lifecycle (rekey, rotate-key, rewrap; issue 8).

-- How many values each key term has sealed. AES-GCM with random 96-bit nonces must
-- stay well below 2^32 encryptions under one key, so vaultd starts a new term when
-- the newest reaches a configured limit. Existing terms start from the versions
-- that name them today (a lower bound: deleted versions are not counted).
ALTER TABLE key_term ADD COLUMN encryptions INTEGER NOT NULL DEFAULT 0 CHECK (encryptions >= 0);
UPDATE key_term SET encryptions = (
    SELECT COUNT(*) FROM secret_version
    WHERE hex(substr(ciphertext, 2, 4)) = printf('%08X', key_term.term)
);

-- 1 on the term that `rotate-key --rewrap` started and is moving every version to:
-- running it again continues the rewrap instead of starting yet another term.
-- Cleared once no version is sealed under an older term.
ALTER TABLE key_term ADD COLUMN rewrap INTEGER NOT NULL DEFAULT 0 CHECK (rewrap IN (0, 1));
