//! The authenticated state's rows as the store found them, before they are
//! checked (`load`): what each says and the MAC stored with it.

use super::mac::{Root, Table};
use super::model::{Client, Grant, Incident, KeyTerm, Rotation, Secret, Token, Version};

/// A stored row as found: what it says, where it is, and the MAC stored with it.
#[derive(Debug, Clone)]
pub struct Found<T> {
    pub row: T,
    pub mac: Option<Vec<u8>>,
}

/// A child row, with the row id of the parent it names.
#[derive(Debug, Clone)]
pub struct Child<K, T> {
    pub parent: i64,
    pub key: K,
    pub row: T,
    pub mac: Option<Vec<u8>>,
}

/// Every row of the authenticated tables, as stored.
#[derive(Debug, Default)]
pub struct StoredState {
    /// Secrets without their versions and rotations (those are below).
    pub secrets: Vec<Found<Secret>>,
    pub versions: Vec<Child<u64, Version>>,
    pub rotations: Vec<Child<i64, Rotation>>,
    /// Clients without their grants.
    pub clients: Vec<Found<Client>>,
    pub grants: Vec<Child<String, Grant>>,
    pub tokens: Vec<Found<Token>>,
    pub incidents: Vec<Found<Incident>>,
    pub terms: Vec<Found<KeyTerm>>,
    pub root: Option<Root>,
    /// Rows holding a value vaultd never writes (an unknown state): table, row id.
    pub unreadable: Vec<(Table, i64)>,
}

impl StoredState {
    /// Whether nothing was ever signed (a vault from before authenticated state).
    pub fn is_unsigned(&self) -> bool {
        self.root.is_none()
            && self.secrets.iter().all(|r| r.mac.is_none())
            && self.versions.iter().all(|r| r.mac.is_none())
            && self.rotations.iter().all(|r| r.mac.is_none())
            && self.clients.iter().all(|r| r.mac.is_none())
            && self.grants.iter().all(|r| r.mac.is_none())
            && self.tokens.iter().all(|r| r.mac.is_none())
            && self.incidents.iter().all(|r| r.mac.is_none())
            && self.terms.iter().all(|r| r.mac.is_none())
    }
}
