-- vaultd schema 6: rotation (ARCHITECTURE §6).
-- Released migrations are never edited; add the next one instead.

-- A secret's rotation policy. rotator: 'manual', 'generate[:LEN[:CHARSET]]' or
-- 'exec:/abs/path'. next_rotation_unix is the due time (schedule plus jitter);
-- NULL when the secret has no schedule. due_alerted_unix: when the current due
-- period was last raised as an alert (manual rotators), so it is raised once.
ALTER TABLE secret ADD COLUMN rotator TEXT NOT NULL DEFAULT 'manual';
ALTER TABLE secret ADD COLUMN rotate_every_secs INTEGER CHECK (rotate_every_secs > 0);
ALTER TABLE secret ADD COLUMN grace_secs INTEGER NOT NULL DEFAULT 3600 CHECK (grace_secs >= 0);
ALTER TABLE secret ADD COLUMN next_rotation_unix INTEGER;
ALTER TABLE secret ADD COLUMN due_alerted_unix INTEGER;

-- A version the provider still has to forget: its revoke-old hook has not run yet
-- (a retired previous, or a pending that failed its test). Its ciphertext is kept
-- until then; revoke_after_unix backs off failed attempts.
ALTER TABLE secret_version ADD COLUMN revoke_pending INTEGER NOT NULL DEFAULT 0 CHECK (revoke_pending IN (0, 1));
ALTER TABLE secret_version ADD COLUMN revoke_after_unix INTEGER;

-- One row per rotation: its persisted state machine. 'create' and 'test' are in
-- progress (a crash there is resumed or rolled back at the next unlock); 'done'
-- and 'failed' are final.
CREATE TABLE rotation (
    id            INTEGER PRIMARY KEY,
    secret_id     INTEGER NOT NULL REFERENCES secret (id) ON DELETE CASCADE,
    rotator       TEXT NOT NULL,
    trigger       TEXT NOT NULL CHECK (trigger IN ('operator', 'schedule')),
    step          TEXT NOT NULL CHECK (step IN ('create', 'test', 'done', 'failed')),
    from_version  INTEGER NOT NULL,
    new_version   INTEGER,
    error         TEXT,
    started_unix  INTEGER NOT NULL,
    updated_unix  INTEGER NOT NULL
) STRICT;

-- At most one rotation of a secret in progress.
CREATE UNIQUE INDEX rotation_in_progress ON rotation (secret_id) WHERE step IN ('create', 'test');
CREATE INDEX rotation_by_secret ON rotation (secret_id, id);
CREATE INDEX secret_next_rotation ON secret (next_rotation_unix) WHERE next_rotation_unix IS NOT NULL;
