//! Numbered migrations from `schema/`, embedded at build time and applied in one
//! transaction. `PRAGMA user_version` records how far a file has come.

use super::StoreError;
use rusqlite::{Connection, TransactionBehavior};

/// `schema/NNNN_*.sql`, in order. Never edit a released one; append the next.
const MIGRATIONS: &[&str] = &[
    include_str!("../../../schema/0001_init.sql"),
    include_str!("../../../schema/0002_audit.sql"),
    include_str!("../../../schema/0003_access.sql"),
    include_str!("../../../schema/0004_tokens.sql"),
    include_str!("../../../schema/0005_exe_sha256.sql"),
    include_str!("../../../schema/0006_rotation.sql"),
    include_str!("../../../schema/0007_incident.sql"),
    include_str!("../../../schema/0008_keys.sql"),
    include_str!("../../../schema/0009_audit_journal.sql"),
    include_str!("../../../schema/0010_audit_batch.sql"),
    include_str!("../../../schema/0011_authenticated_state.sql"),
];

/// Brings the database up to date; refuses one from a newer vaultd.
pub(super) fn apply(conn: &mut Connection) -> Result<u32, StoreError> {
    let known = MIGRATIONS.len() as u32;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found: u32 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > known {
        return Err(StoreError::NewerSchema { found, known });
    }
    for sql in &MIGRATIONS[found as usize..] {
        tx.execute_batch(sql)?;
    }
    tx.pragma_update(None, "user_version", known)?;
    tx.commit()?;
    Ok(known)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn applies_once_and_refuses_newer() {
        let mut conn = Connection::open_in_memory().unwrap();
        let latest = MIGRATIONS.len() as u32;
        assert_eq!(apply(&mut conn).unwrap(), latest);
        assert_eq!(apply(&mut conn).unwrap(), latest);
        conn.pragma_update(None, "user_version", 99).unwrap();
        assert!(matches!(apply(&mut conn), Err(StoreError::NewerSchema { found: 99, known }) if known == latest));
    }

    #[test]
    fn a_failing_migration_leaves_nothing_behind() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE secret (x INTEGER)").unwrap();
        assert!(apply(&mut conn).is_err());
        let v: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(v, 0);
        let tables: u32 =
            conn.query_row("SELECT COUNT(*) FROM sqlite_master WHERE name = 'vault_header'", [], |r| r.get(0)).unwrap();
        assert_eq!(tables, 0);
    }

    #[test]
    fn schema_8_counts_the_encryptions_each_term_already_made() {
        let mut conn = Connection::open_in_memory().unwrap();
        for sql in &MIGRATIONS[..5] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 5).unwrap();
        conn.execute_batch(
            "INSERT INTO key_term VALUES (1, x'00', 0), (2, x'00', 0), (3, x'00', 0);
             INSERT INTO secret VALUES (1, 'prod', 'a', '', '', 3, 0, 0);
             INSERT INTO secret_version VALUES
               (1, 1, 'retired', x'0100000001aa', 0, NULL),
               (1, 2, 'previous', x'0100000002bb', 0, NULL),
               (1, 3, 'current', x'0100000002cc', 0, NULL),
               (1, 4, 'destroyed', NULL, 0, NULL);",
        )
        .unwrap();
        assert_eq!(apply(&mut conn).unwrap(), MIGRATIONS.len() as u32);
        let mut stmt = conn.prepare("SELECT term, encryptions, rewrap FROM key_term ORDER BY term").unwrap();
        let rows: Vec<(u32, u64, bool)> =
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().map(|r| r.unwrap()).collect();
        assert_eq!(rows, [(1, 1, false), (2, 2, false), (3, 0, false)]);
    }
}
