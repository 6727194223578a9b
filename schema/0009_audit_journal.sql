-- vaultd schema 9: how far the read journal has been imported into the audit log.

-- Records of reads are appended to a MAC-chained journal file first and imported
-- here in batches (audit/journal.rs). jseq is the last imported record's number
-- and jmac its journal MAC: after a crash, the records left in the journal must
-- continue exactly from here, or they were altered. mac authenticates the pair,
-- so the position cannot be moved forward to skip records without the key.
CREATE TABLE audit_journal (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    jseq  INTEGER NOT NULL,
    jmac  BLOB NOT NULL,
    mac   BLOB NOT NULL
) STRICT;
