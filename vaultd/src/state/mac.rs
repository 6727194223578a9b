//! How the state is authenticated under the root key (a key derived from it,
//! see `crypto::Unlocked::row_mac`), so that a row edited, inserted, deleted,
//! moved or put back from an older copy behind vaultd's back is noticed:
//!
//! - **Each row** has a MAC over its table, its identity (names, not row ids:
//!   a row moved to another secret or client no longer matches) and every field
//!   vaultd acts on.
//! - **A row's children** (a secret's versions and rotations, a client's
//!   grants) are covered by the parent's MAC too, which lists theirs: a child
//!   deleted, added or put back from an older copy breaks the parent.
//! - **Each top-level table** ([`SUMMED`]) has a count and a sum of a secret
//!   function of each row's MAC, and **the root** (one row) MACs every count
//!   and sum with a generation that every change bumps: a whole row deleted,
//!   added or replayed breaks its table's sum.
//! - The audit head records the generation too, so the state cannot be put
//!   back to an older generation without cutting the audit log to match (what
//!   is left is a rollback of the whole data directory; see SECURITY.md).
//!
//! Encodings are length-prefixed so that no two different rows encode alike.

use super::model::{Client, Grant, Incident, KeyTerm, Rotation, Secret, Token, Version};
use crate::crypto::{Mac, Unlocked};
use std::collections::BTreeMap;

/// The authenticated tables, by their SQL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Secret,
    Version,
    Rotation,
    Client,
    Grant,
    Token,
    Incident,
    KeyTerm,
}

impl Table {
    pub fn sql(self) -> &'static str {
        match self {
            Table::Secret => "secret",
            Table::Version => "secret_version",
            Table::Rotation => "rotation",
            Table::Client => "client",
            Table::Grant => "client_grant",
            Table::Token => "token",
            Table::Incident => "incident",
            Table::KeyTerm => "key_term",
        }
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.sql())
    }
}

/// The tables whose rows the root counts and sums (the others are children).
pub const SUMMED: [Table; 5] = [Table::Secret, Table::Client, Table::Token, Table::Incident, Table::KeyTerm];

/// A row's encoding, built field by field.
struct Enc(Vec<u8>);

impl Enc {
    fn new(table: Table) -> Enc {
        let mut e = Enc(Vec::with_capacity(128));
        e.str(table.sql());
        e
    }

    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(&(b.len() as u64).to_be_bytes());
        self.0.extend_from_slice(b);
        self
    }

    fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }

    fn int(&mut self, n: i64) -> &mut Self {
        self.0.extend_from_slice(&n.to_be_bytes());
        self
    }

    fn uint(&mut self, n: u64) -> &mut Self {
        self.0.extend_from_slice(&n.to_be_bytes());
        self
    }

    fn flag(&mut self, b: bool) -> &mut Self {
        self.0.push(u8::from(b));
        self
    }

    /// An optional field: a presence byte, then the field.
    fn opt<T>(&mut self, v: Option<T>, put: impl FnOnce(&mut Self, T) -> &mut Self) -> &mut Self {
        self.flag(v.is_some());
        if let Some(v) = v {
            put(self, v);
        }
        self
    }

    fn mac(&self, keys: &Unlocked) -> Mac {
        keys.row_mac(&self.0)
    }
}

/// The MACs of a secret's rows: its own and its children's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretMacs {
    pub row: Mac,
    pub versions: BTreeMap<u64, Mac>,
    pub rotations: BTreeMap<i64, Mac>,
}

/// The MACs of a client's rows: its own and its grants'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientMacs {
    pub row: Mac,
    pub grants: BTreeMap<String, Mac>,
}

pub fn version(keys: &Unlocked, env: &str, name: &str, number: u64, v: &Version) -> Mac {
    Enc::new(Table::Version)
        .str(env)
        .str(name)
        .uint(number)
        .str(v.state.as_str())
        .opt(v.ciphertext.as_deref(), Enc::bytes)
        .int(v.created_unix)
        .opt(v.expires_unix, Enc::int)
        .flag(v.revoke_pending)
        .opt(v.revoke_after_unix, Enc::int)
        .mac(keys)
}

pub fn rotation(keys: &Unlocked, env: &str, name: &str, id: i64, r: &Rotation) -> Mac {
    Enc::new(Table::Rotation)
        .str(env)
        .str(name)
        .int(id)
        .str(&r.rotator)
        .str(r.trigger.as_str())
        .str(r.step.as_str())
        .uint(r.from_version)
        .opt(r.new_version, Enc::uint)
        .opt(r.error.as_deref(), Enc::str)
        .int(r.started_unix)
        .int(r.updated_unix)
        .mac(keys)
}

/// A secret's MAC covers its children's, given here (as stored or as computed).
pub fn secret_row(keys: &Unlocked, s: &Secret, versions: &BTreeMap<u64, Mac>, rotations: &BTreeMap<i64, Mac>) -> Mac {
    let mut e = Enc::new(Table::Secret);
    e.str(&s.env)
        .str(&s.name)
        .str(&s.provider)
        .str(&s.description)
        .uint(s.current_version)
        .int(s.created_unix)
        .int(s.updated_unix)
        .str(&s.rotator)
        .opt(s.rotate_every_secs, Enc::int)
        .int(s.grace_secs)
        .opt(s.next_rotation_unix, Enc::int)
        .opt(s.due_alerted_unix, Enc::int);
    e.uint(versions.len() as u64);
    for (number, mac) in versions {
        e.uint(*number).bytes(mac);
    }
    e.uint(rotations.len() as u64);
    for (id, mac) in rotations {
        e.int(*id).bytes(mac);
    }
    e.mac(keys)
}

pub fn secret(keys: &Unlocked, s: &Secret) -> SecretMacs {
    let versions: BTreeMap<u64, Mac> =
        s.versions.iter().map(|(n, v)| (*n, version(keys, &s.env, &s.name, *n, v))).collect();
    let rotations: BTreeMap<i64, Mac> =
        s.rotations.iter().map(|(id, r)| (*id, rotation(keys, &s.env, &s.name, *id, r))).collect();
    SecretMacs { row: secret_row(keys, s, &versions, &rotations), versions, rotations }
}

pub fn grant(keys: &Unlocked, client: &str, pattern: &str, g: &Grant) -> Mac {
    Enc::new(Table::Grant).str(client).str(pattern).str(g.kind.as_str()).int(g.created_unix).mac(keys)
}

pub fn client_row(keys: &Unlocked, c: &Client, grants: &BTreeMap<String, Mac>) -> Mac {
    let mut e = Enc::new(Table::Client);
    e.str(&c.name)
        .uint(u64::from(c.uid))
        .opt(c.gid.map(u64::from), Enc::uint)
        .opt(c.exe.as_deref(), Enc::str)
        .opt(c.exe_sha256.as_deref(), Enc::str)
        .flag(c.enabled)
        .flag(c.token_only)
        .int(c.created_unix);
    e.uint(grants.len() as u64);
    for (pattern, mac) in grants {
        e.str(pattern).bytes(mac);
    }
    e.mac(keys)
}

pub fn client(keys: &Unlocked, c: &Client) -> ClientMacs {
    let grants: BTreeMap<String, Mac> = c.grants.iter().map(|(p, g)| (p.clone(), grant(keys, &c.name, p, g))).collect();
    ClientMacs { row: client_row(keys, c, &grants), grants }
}

pub fn token(keys: &Unlocked, t: &Token) -> Mac {
    Enc::new(Table::Token)
        .str(&t.accessor)
        .bytes(&t.hash)
        .str(&t.client)
        .opt(t.bind_uid.map(u64::from), Enc::uint)
        .opt(t.bind_exe.as_deref(), Enc::str)
        .int(t.created_unix)
        .opt(t.expires_unix, Enc::int)
        .opt(t.idle_secs, Enc::int)
        .opt(t.uses_left, Enc::int)
        .opt(t.last_used_unix, Enc::int)
        .opt(t.revoked_unix, Enc::int)
        .mac(keys)
}

pub fn incident(keys: &Unlocked, i: &Incident) -> Mac {
    Enc::new(Table::Incident).int(i.id).int(i.started_unix).str(i.mode.as_str()).str(&i.reason).str(&i.report).mac(keys)
}

pub fn key_term(keys: &Unlocked, t: &KeyTerm) -> Mac {
    Enc::new(Table::KeyTerm)
        .uint(u64::from(t.term))
        .bytes(&t.wrapped_key)
        .int(t.created_unix)
        .uint(t.encryptions)
        .flag(t.rewrap)
        .mac(keys)
}

/// Each summed table's row count and keyed sum: what the root's per-table
/// MACs cover. Kept in memory while unlocked; never stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sums {
    counts: [u64; SUMMED.len()],
    sums: [u128; SUMMED.len()],
}

fn slot(table: Table) -> usize {
    SUMMED.iter().position(|t| *t == table).expect("only summed tables are counted")
}

impl Sums {
    /// Counts a row of `table` whose MAC is `mac`.
    pub fn add(&mut self, keys: &Unlocked, table: Table, mac: &[u8]) {
        let i = slot(table);
        self.counts[i] = self.counts[i].wrapping_add(1);
        self.sums[i] = self.sums[i].wrapping_add(keys.row_term(mac));
    }

    /// Takes back what [`Sums::add`] counted for that row.
    pub fn remove(&mut self, keys: &Unlocked, table: Table, mac: &[u8]) {
        let i = slot(table);
        self.counts[i] = self.counts[i].wrapping_sub(1);
        self.sums[i] = self.sums[i].wrapping_sub(keys.row_term(mac));
    }

    /// One table's MAC at `generation`.
    pub fn table_mac(&self, keys: &Unlocked, generation: u64, table: Table) -> Mac {
        let i = slot(table);
        let mut e = Enc::new(table);
        e.uint(generation).uint(self.counts[i]).0.extend_from_slice(&self.sums[i].to_be_bytes());
        keys.state_root_mac(&e.0)
    }
}

/// The root row: a generation and each summed table's MAC, in [`SUMMED`] order,
/// under one MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    pub generation: u64,
    pub tables: Vec<u8>,
    pub mac: Vec<u8>,
}

impl Root {
    /// The root over `tables` (each table's MAC, in order) at `generation`.
    pub fn new(keys: &Unlocked, generation: u64, tables: Vec<u8>) -> Root {
        let mac = root_mac(keys, generation, &tables).to_vec();
        Root { generation, tables, mac }
    }

    /// Whether the root row is one vaultd wrote (its MAC matches).
    pub fn is_genuine(&self, keys: &Unlocked) -> bool {
        let want = root_mac(keys, self.generation, &self.tables);
        self.mac.len() == want.len() && self.mac.iter().zip(want).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }

    /// The MAC the root states for `table`.
    pub fn table(&self, table: Table) -> Option<&[u8]> {
        let at = slot(table) * crate::crypto::MAC_LEN;
        self.tables.get(at..at + crate::crypto::MAC_LEN)
    }
}

fn root_mac(keys: &Unlocked, generation: u64, tables: &[u8]) -> Mac {
    let mut e = b"root".to_vec();
    e.extend_from_slice(&generation.to_be_bytes());
    e.extend_from_slice(tables);
    keys.state_root_mac(&e)
}
