-- vaultd schema 10: journaled reads imported as one row per batch.

-- A row with records holds a batch of read-journal records, imported together
-- (audit/batch.rs): the records, as journaled and then LZ4-compressed, are
-- entries seq - n + 1 ..= seq, and the row's MAC covers them, as stored, with
-- its own fields. One row and one MAC per batch, instead of per read, is what
-- keeps auditing every read cheap. Every other row holds one entry, and records
-- is NULL. (Until 2026-12-07 the records were stored uncompressed; no release
-- stored them so.)
ALTER TABLE audit ADD COLUMN records BLOB;
