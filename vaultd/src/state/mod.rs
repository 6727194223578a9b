//! The state vaultd acts on: who may read what (clients, grants, tokens) and
//! which value is served (secrets, their versions and rotations), with the
//! incidents and key terms that bear on both.
//!
//! While unlocked vaultd holds it in memory as an [`Image`]: checked at unlock
//! against the MACs stored with every row ([`load`], [`mac`]), served from
//! without touching the database, and changed only through a [`Draft`] that the
//! same transaction writes back, re-signed, with its audit records
//! ([`Draft::persist`]); the image takes the change once the transaction has
//! committed. A row changed behind vaultd's back is therefore never acted on:
//! while vaultd runs it is not read at all, and at the next unlock it fails its
//! MAC and is quarantined (reported, refused, and left for the owner to
//! acknowledge).

pub mod anchor;
pub mod change;
pub mod load;
pub mod mac;
pub mod model;
mod small_map;
mod stored;

pub use change::{PolicyChange, Promoted, SecretLabels};
pub use model::{
    Client, Grant, GrantKind, Incident, IncidentMode, KeyTerm, Rotation, Secret, Step, Token, Trigger, Version,
    VersionRow, VersionState,
};

pub use small_map::SmallMap;
pub use stored::{Child, Found, StoredState};

use crate::crypto::Unlocked;
use mac::{ClientMacs, Root, SUMMED, SecretMacs, Sums, Table};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// What a quarantine covers: one entry, or a whole table whose rows do not add
/// up to its root.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Secret(String, String),
    Client(String),
    Token(String),
    Table(Table),
}

/// A row (or table) found changed behind vaultd's back. Names only, never a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub table: Table,
    /// The row's identity (`env/name version 3`, a client's name, a token's
    /// accessor), or `*` for the table as a whole.
    pub row: String,
    pub problem: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.table, self.row, self.problem)
    }
}

/// Why a change was refused.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "{0} is quarantined: it was changed behind vaultd's back (see `vaultctl status`; `vaultctl integrity ack` after review)"
    )]
    Quarantined(String),
}

/// Where the state is written: the store's transaction. Each entry is written
/// whole with the MACs [`mac`] made (a new one, with id 0, gets its row id), so
/// nothing the store holds is read back to decide anything.
pub trait Persist {
    type Error;
    fn save_secret(&self, old: Option<&Secret>, new: &mut Secret, macs: &SecretMacs) -> Result<(), Self::Error>;
    fn delete_secret(&self, id: i64) -> Result<(), Self::Error>;
    fn save_client(&self, old: Option<&Client>, new: &mut Client, macs: &ClientMacs) -> Result<(), Self::Error>;
    /// Deletes a client with its grants and tokens.
    fn delete_client(&self, id: i64) -> Result<(), Self::Error>;
    fn save_token(&self, t: &Token, client_id: i64, mac: &[u8]) -> Result<(), Self::Error>;
    fn delete_token(&self, accessor: &str) -> Result<(), Self::Error>;
    /// `mac: None` stores it unsigned (written without the key: offline).
    fn save_incident(&self, i: &mut Incident, mac: Option<&[u8]>) -> Result<(), Self::Error>;
    fn save_term(&self, t: &KeyTerm, mac: &[u8]) -> Result<(), Self::Error>;
    fn delete_term(&self, term: u32) -> Result<(), Self::Error>;
    fn set_state_root(&self, root: &Root) -> Result<(), Self::Error>;
    /// Deletes rows that name a parent that does not exist (never vaultd's).
    fn delete_orphans(&self) -> Result<(), Self::Error>;
}

/// The verified state, in memory.
#[derive(Debug, Default)]
pub struct Image {
    /// env → name → secret.
    secrets: HashMap<String, HashMap<String, Arc<Secret>>>,
    clients: BTreeMap<String, Arc<Client>>,
    /// By keyed hash (a token is looked up by what the caller presents).
    tokens: HashMap<Vec<u8>, Arc<Token>>,
    accessors: HashMap<String, Vec<u8>>,
    /// When each token was last used, if since its row was last written: a
    /// token without a use limit records its uses here, not with a commit per
    /// read, and the vault's `flush_token_uses` writes them
    /// back every few seconds (a crash loses only that much, which can only make
    /// a token look idle sooner, never later).
    recent_uses: HashMap<String, std::sync::atomic::AtomicI64>,
    incidents: BTreeMap<i64, Incident>,
    /// Revoke-alls written offline (no key), not yet applied.
    pending_incidents: BTreeMap<i64, Incident>,
    terms: BTreeMap<u32, KeyTerm>,
    /// What the next root covers: the rows held, and the stored MACs of rows
    /// quarantined one by one (so they stay reported until acknowledged).
    sums: Sums,
    generation: u64,
    quarantine: BTreeSet<Scope>,
    /// The stored per-table MACs of quarantined tables, carried into every new
    /// root unchanged, so they keep failing until acknowledged.
    carried: BTreeMap<Table, Vec<u8>>,
    /// Whether a root carrying them has been written since they were found.
    carried_written: bool,
}

impl Image {
    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn quarantined(&self, scope: &Scope, table: Table) -> bool {
        self.quarantine.contains(scope) || self.quarantine.contains(&Scope::Table(table))
    }

    pub fn quarantine_list(&self) -> impl Iterator<Item = &Scope> {
        self.quarantine.iter()
    }

    /// A secret as served: `Err` with its name when it is quarantined.
    pub fn secret(&self, env: &str, name: &str) -> Result<Option<&Arc<Secret>>, StateError> {
        if self.quarantined(&Scope::Secret(env.into(), name.into()), Table::Secret) {
            return Err(StateError::Quarantined(format!("secret {env}/{name}")));
        }
        Ok(self.secrets.get(env).and_then(|names| names.get(name)))
    }

    /// Whether a whole table is quarantined (then none of its rows is acted on).
    fn table_held(&self, table: Table) -> bool {
        !self.quarantine.contains(&Scope::Table(table))
    }

    /// Every secret served (quarantined ones are not).
    pub fn secrets(&self) -> impl Iterator<Item = &Arc<Secret>> {
        let held = self.table_held(Table::Secret);
        self.secrets.values().flat_map(HashMap::values).filter(move |_| held)
    }

    pub fn secrets_in(&self, env: &str) -> impl Iterator<Item = &Arc<Secret>> {
        let held = self.table_held(Table::Secret);
        self.secrets.get(env).into_iter().flat_map(HashMap::values).filter(move |_| held)
    }

    pub fn client(&self, name: &str) -> Option<&Arc<Client>> {
        self.clients.get(name).filter(|_| self.table_held(Table::Client))
    }

    pub fn clients(&self) -> impl Iterator<Item = &Arc<Client>> {
        let held = self.table_held(Table::Client);
        self.clients.values().filter(move |_| held)
    }

    /// A token by its keyed hash, with its client (none if either is quarantined).
    pub fn token_by_hash(&self, hash: &[u8]) -> Option<&Arc<Token>> {
        self.tokens.get(hash).filter(|_| self.table_held(Table::Token))
    }

    pub fn token(&self, accessor: &str) -> Option<&Arc<Token>> {
        self.tokens.get(self.accessors.get(accessor)?).filter(|_| self.table_held(Table::Token))
    }

    pub fn tokens(&self) -> impl Iterator<Item = &Arc<Token>> {
        let held = self.table_held(Table::Token);
        self.tokens.values().filter(move |_| held)
    }

    pub fn incidents(&self) -> impl Iterator<Item = &Incident> {
        let held = self.table_held(Table::Incident);
        self.incidents.values().filter(move |_| held)
    }

    pub fn pending_incidents(&self) -> impl Iterator<Item = &Incident> {
        self.pending_incidents.values()
    }

    /// The newest incident known, applied or pending (0: none).
    pub fn latest_incident(&self) -> i64 {
        let applied = self.incidents.keys().next_back().copied().unwrap_or(0);
        applied.max(self.pending_incidents.keys().next_back().copied().unwrap_or(0))
    }

    pub fn terms(&self) -> impl Iterator<Item = &KeyTerm> {
        self.terms.values()
    }

    /// The newest key term (0: none).
    pub fn newest_term(&self) -> u32 {
        self.terms.keys().next_back().copied().unwrap_or(0)
    }

    fn insert_secret(&mut self, s: Secret) {
        self.secrets.entry(s.env.clone()).or_default().insert(s.name.clone(), Arc::new(s));
    }

    fn remove_secret(&mut self, env: &str, name: &str) {
        if let Some(names) = self.secrets.get_mut(env) {
            names.remove(name);
            if names.is_empty() {
                self.secrets.remove(env);
            }
        }
    }

    fn insert_client(&mut self, c: Client) {
        self.clients.insert(c.name.clone(), Arc::new(c));
    }

    fn insert_token(&mut self, t: Token) {
        self.accessors.insert(t.accessor.clone(), t.hash.clone());
        self.recent_uses.entry(t.accessor.clone()).or_default();
        self.tokens.insert(t.hash.clone(), Arc::new(t));
    }

    fn remove_token(&mut self, accessor: &str) {
        if let Some(hash) = self.accessors.remove(accessor) {
            self.tokens.remove(&hash);
        }
        self.recent_uses.remove(accessor);
    }

    /// Notes a use of a token at `now`, without a commit (see `recent_uses`).
    pub fn note_use(&self, accessor: &str, now: i64) {
        if let Some(last) = self.recent_uses.get(accessor) {
            last.fetch_max(now, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// When `token` was last used: its row's time, or a later use noted since.
    pub fn last_use(&self, token: &Token) -> Option<i64> {
        let noted = self.recent_uses.get(&token.accessor).map(|t| t.load(std::sync::atomic::Ordering::Relaxed));
        token.last_used_unix.max(noted.filter(|t| *t > 0))
    }

    /// Tokens used since their rows were written: (accessor, when).
    pub fn uses_to_write(&self) -> Vec<(String, i64)> {
        self.tokens()
            .filter_map(|t| Some((t.accessor.clone(), self.last_use(t).filter(|l| Some(*l) > t.last_used_unix)?)))
            .collect()
    }

    fn quarantine(&mut self, scope: Scope) {
        self.quarantine.insert(scope);
    }

    /// Nothing is acted on until the owner acknowledges (a rollback of the whole
    /// data directory, found by the anchor): every table quarantined, and kept so
    /// at the next unlock.
    pub fn quarantine_everything(&mut self) {
        for table in SUMMED {
            self.quarantine(Scope::Table(table));
            self.carried.insert(table, vec![0; crate::crypto::MAC_LEN]);
        }
    }

    /// Starts a change.
    pub fn draft(&self) -> Draft<'_> {
        Draft::empty(self)
    }

    /// Takes a persisted change (after its transaction committed).
    pub fn apply(&mut self, changes: Changes) {
        for ((env, name), secret) in changes.secrets {
            self.remove_secret(&env, &name);
            if let Some(s) = secret {
                self.insert_secret(s);
            }
        }
        for (name, client) in changes.clients {
            self.clients.remove(&name);
            if let Some(c) = client {
                self.insert_client(c);
            }
        }
        for (accessor, token) in changes.tokens {
            match token {
                // Replaced: uses noted meanwhile stay noted.
                Some(t) => {
                    if let Some(hash) = self.accessors.remove(&accessor) {
                        self.tokens.remove(&hash);
                    }
                    self.insert_token(t);
                }
                None => self.remove_token(&accessor),
            }
        }
        for incident in changes.incidents {
            self.pending_incidents.remove(&incident.id);
            self.incidents.insert(incident.id, incident);
        }
        for (term, key_term) in changes.terms {
            match key_term {
                Some(t) => self.terms.insert(term, t),
                None => self.terms.remove(&term),
            };
        }
        self.sums = changes.sums;
        self.generation = changes.generation;
        self.carried_written = true;
    }
}

/// A change being made: copies of the entries it touches, on top of the image.
pub struct Draft<'i> {
    base: &'i Image,
    secrets: BTreeMap<(String, String), Option<Secret>>,
    clients: BTreeMap<String, Option<Client>>,
    tokens: BTreeMap<String, Option<Token>>,
    /// New incidents (id 0 until stored) and pending ones being applied.
    incidents: Vec<Incident>,
    terms: BTreeMap<u32, Option<KeyTerm>>,
}

/// A persisted change, for [`Image::apply`].
#[derive(Debug, Default)]
pub struct Changes {
    secrets: Vec<((String, String), Option<Secret>)>,
    clients: Vec<(String, Option<Client>)>,
    tokens: Vec<(String, Option<Token>)>,
    incidents: Vec<Incident>,
    terms: Vec<(u32, Option<KeyTerm>)>,
    sums: Sums,
    generation: u64,
}

impl Changes {
    /// The state generation after the change.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

impl<'i> Draft<'i> {
    fn empty(base: &'i Image) -> Draft<'i> {
        Draft {
            base,
            secrets: BTreeMap::new(),
            clients: BTreeMap::new(),
            tokens: BTreeMap::new(),
            incidents: Vec::new(),
            terms: BTreeMap::new(),
        }
    }

    pub fn image(&self) -> &'i Image {
        self.base
    }

    // ---- secrets

    /// `env/name` as this change sees it.
    pub fn secret(&self, env: &str, name: &str) -> Result<Option<&Secret>, StateError> {
        match self.secrets.get(&(env.to_owned(), name.to_owned())) {
            Some(s) => Ok(s.as_ref()),
            None => Ok(self.base.secret(env, name)?.map(|s| &**s)),
        }
    }

    /// `env/name` to change (copied into the draft on first use).
    pub fn secret_mut(&mut self, env: &str, name: &str) -> Result<Option<&mut Secret>, StateError> {
        let key = (env.to_owned(), name.to_owned());
        if !self.secrets.contains_key(&key) {
            let base = self.base.secret(env, name)?.map(|s| Secret::clone(s));
            self.secrets.insert(key.clone(), base);
        }
        Ok(self.secrets.get_mut(&key).and_then(Option::as_mut))
    }

    /// Adds a secret that does not exist yet (nor is quarantined).
    pub fn insert_secret(&mut self, secret: Secret) -> Result<&mut Secret, StateError> {
        self.base.secret(&secret.env, &secret.name)?;
        let key = (secret.env.clone(), secret.name.clone());
        self.secrets.insert(key.clone(), Some(secret));
        Ok(self.secrets.get_mut(&key).and_then(Option::as_mut).expect("just inserted"))
    }

    pub fn remove_secret(&mut self, env: &str, name: &str) -> Result<Option<Secret>, StateError> {
        let old = self.secret_mut(env, name)?.map(|s| s.clone());
        self.secrets.insert((env.to_owned(), name.to_owned()), None);
        Ok(old)
    }

    /// Every secret's `env/name` as this change sees them.
    pub fn secret_names(&self) -> Vec<(String, String)> {
        let mut names: BTreeSet<(String, String)> =
            self.base.secrets().map(|s| (s.env.clone(), s.name.clone())).collect();
        names.retain(|(env, name)| self.base.secret(env, name).is_ok());
        for (key, s) in &self.secrets {
            match s {
                Some(_) => names.insert(key.clone()),
                None => names.remove(key),
            };
        }
        names.into_iter().collect()
    }

    // ---- clients

    pub fn client(&self, name: &str) -> Result<Option<&Client>, StateError> {
        match self.clients.get(name) {
            Some(c) => Ok(c.as_ref()),
            None => {
                self.check_client(name)?;
                Ok(self.base.client(name).map(|c| &**c))
            }
        }
    }

    fn check_client(&self, name: &str) -> Result<(), StateError> {
        if self.base.quarantined(&Scope::Client(name.into()), Table::Client) {
            return Err(StateError::Quarantined(format!("client {name}")));
        }
        Ok(())
    }

    pub fn client_mut(&mut self, name: &str) -> Result<Option<&mut Client>, StateError> {
        if !self.clients.contains_key(name) {
            self.check_client(name)?;
            let base = self.base.client(name).map(|c| Client::clone(c));
            self.clients.insert(name.to_owned(), base);
        }
        Ok(self.clients.get_mut(name).and_then(Option::as_mut))
    }

    pub fn insert_client(&mut self, client: Client) -> Result<(), StateError> {
        self.check_client(&client.name)?;
        self.clients.insert(client.name.clone(), Some(client));
        Ok(())
    }

    pub fn remove_client(&mut self, name: &str) -> Result<(), StateError> {
        self.client_mut(name)?;
        self.clients.insert(name.to_owned(), None);
        Ok(())
    }

    pub fn client_names(&self) -> Vec<String> {
        let mut names: BTreeSet<String> = self.base.clients().map(|c| c.name.clone()).collect();
        for (name, c) in &self.clients {
            match c {
                Some(_) => names.insert(name.clone()),
                None => names.remove(name),
            };
        }
        names.into_iter().collect()
    }

    // ---- tokens

    fn check_token(&self, accessor: &str) -> Result<(), StateError> {
        if self.base.quarantined(&Scope::Token(accessor.into()), Table::Token) {
            return Err(StateError::Quarantined(format!("token {accessor}")));
        }
        Ok(())
    }

    pub fn token(&self, accessor: &str) -> Result<Option<&Token>, StateError> {
        match self.tokens.get(accessor) {
            Some(t) => Ok(t.as_ref()),
            None => {
                self.check_token(accessor)?;
                Ok(self.base.token(accessor).map(|t| &**t))
            }
        }
    }

    pub fn token_mut(&mut self, accessor: &str) -> Result<Option<&mut Token>, StateError> {
        if !self.tokens.contains_key(accessor) {
            self.check_token(accessor)?;
            let base = self.base.token(accessor).map(|t| Token::clone(t));
            self.tokens.insert(accessor.to_owned(), base);
        }
        Ok(self.tokens.get_mut(accessor).and_then(Option::as_mut))
    }

    pub fn insert_token(&mut self, token: Token) -> Result<(), StateError> {
        self.check_token(&token.accessor)?;
        self.tokens.insert(token.accessor.clone(), Some(token));
        Ok(())
    }

    pub fn remove_token(&mut self, accessor: &str) {
        self.tokens.insert(accessor.to_owned(), None);
    }

    /// Every token's accessor as this change sees them.
    pub fn token_accessors(&self) -> Vec<String> {
        let mut all: BTreeSet<String> = self.base.tokens().map(|t| t.accessor.clone()).collect();
        for (accessor, t) in &self.tokens {
            match t {
                Some(_) => all.insert(accessor.clone()),
                None => all.remove(accessor),
            };
        }
        all.into_iter().collect()
    }

    // ---- incidents and key terms

    /// Stores a new incident (its id is known once persisted) or an updated one.
    pub fn save_incident(&mut self, incident: Incident) {
        self.incidents.retain(|i| i.id == 0 || i.id != incident.id);
        self.incidents.push(incident);
    }

    pub fn term(&self, term: u32) -> Option<&KeyTerm> {
        match self.terms.get(&term) {
            Some(t) => t.as_ref(),
            None => self.base.terms.get(&term),
        }
    }

    pub fn term_numbers(&self) -> Vec<u32> {
        let mut all: BTreeSet<u32> = self.base.terms.keys().copied().collect();
        for (n, t) in &self.terms {
            match t {
                Some(_) => all.insert(*n),
                None => all.remove(n),
            };
        }
        all.into_iter().collect()
    }

    fn check_terms(&self) -> Result<(), StateError> {
        if self.base.quarantine.contains(&Scope::Table(Table::KeyTerm)) {
            return Err(StateError::Quarantined("the key terms".into()));
        }
        Ok(())
    }

    pub fn term_mut(&mut self, term: u32) -> Result<Option<&mut KeyTerm>, StateError> {
        self.check_terms()?;
        if !self.terms.contains_key(&term) {
            let base = self.base.terms.get(&term).cloned();
            self.terms.insert(term, base);
        }
        Ok(self.terms.get_mut(&term).and_then(Option::as_mut))
    }

    pub fn insert_term(&mut self, term: KeyTerm) -> Result<(), StateError> {
        self.check_terms()?;
        self.terms.insert(term.term, Some(term));
        Ok(())
    }

    pub fn remove_term(&mut self, term: u32) -> Result<(), StateError> {
        self.check_terms()?;
        self.terms.insert(term, None);
        Ok(())
    }

    /// Whether no entry changed.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
            && self.clients.is_empty()
            && self.tokens.is_empty()
            && self.incidents.is_empty()
            && self.terms.is_empty()
    }

    /// Writes the change in `txn`: each changed entry re-signed, the sums and
    /// a new root. Returns what the image takes once `txn` commits.
    pub fn persist<P: Persist>(self, txn: &P, keys: &Unlocked) -> Result<Changes, P::Error> {
        let base = self.base;
        let mut sums = base.sums.clone();
        let mut changes = Changes { generation: base.generation, ..Changes::default() };
        // A root carrying quarantined tables is written at the unlock that found
        // them, even if nothing else changes, so the next unlock finds them so.
        if self.is_empty() && (base.carried.is_empty() || base.carried_written) {
            changes.sums = sums;
            return Ok(changes);
        }
        for ((env, name), new) in self.secrets {
            let old = base.secrets.get(&env).and_then(|n| n.get(&name));
            if old.map(|o| &**o) == new.as_ref() {
                continue;
            }
            if let Some(old) = old {
                sums.remove(keys, Table::Secret, &mac::secret(keys, old).row);
            }
            let new = match new {
                Some(mut s) => {
                    let macs = mac::secret(keys, &s);
                    txn.save_secret(old.map(|o| &**o), &mut s, &macs)?;
                    sums.add(keys, Table::Secret, &macs.row);
                    Some(s)
                }
                None => {
                    if let Some(old) = old {
                        txn.delete_secret(old.id)?;
                    }
                    None
                }
            };
            changes.secrets.push(((env, name), new));
        }
        // Clients before tokens: a new token names its client's row id.
        let mut client_ids: HashMap<String, i64> = base.clients.values().map(|c| (c.name.clone(), c.id)).collect();
        for (name, new) in self.clients {
            let old = base.clients.get(&name);
            if old.map(|o| &**o) == new.as_ref() {
                continue;
            }
            if let Some(old) = old {
                sums.remove(keys, Table::Client, &mac::client(keys, old).row);
            }
            let new = match new {
                Some(mut c) => {
                    let macs = mac::client(keys, &c);
                    txn.save_client(old.map(|o| &**o), &mut c, &macs)?;
                    sums.add(keys, Table::Client, &macs.row);
                    client_ids.insert(name.clone(), c.id);
                    Some(c)
                }
                None => {
                    if let Some(old) = old {
                        txn.delete_client(old.id)?;
                    }
                    client_ids.remove(&name);
                    None
                }
            };
            changes.clients.push((name, new));
        }
        for (accessor, new) in self.tokens {
            let old = base.token(&accessor);
            if old.map(|o| &**o) == new.as_ref() {
                continue;
            }
            if let Some(old) = old {
                sums.remove(keys, Table::Token, &mac::token(keys, old));
            }
            match &new {
                Some(t) => {
                    let mac = mac::token(keys, t);
                    let client_id = client_ids.get(&t.client).copied().unwrap_or(0);
                    txn.save_token(t, client_id, &mac)?;
                    sums.add(keys, Table::Token, &mac);
                }
                None => txn.delete_token(&accessor)?,
            }
            changes.tokens.push((accessor, new));
        }
        for mut incident in self.incidents {
            if let Some(old) = base.incidents.get(&incident.id) {
                sums.remove(keys, Table::Incident, &mac::incident(keys, old));
            }
            if incident.id == 0 {
                // The id first, so the MAC covers it.
                txn.save_incident(&mut incident, None)?;
            }
            let mac = mac::incident(keys, &incident);
            txn.save_incident(&mut incident, Some(&mac))?;
            sums.add(keys, Table::Incident, &mac);
            changes.incidents.push(incident);
        }
        for (term, new) in self.terms {
            let old = base.terms.get(&term);
            if old == new.as_ref() {
                continue;
            }
            if let Some(old) = old {
                sums.remove(keys, Table::KeyTerm, &mac::key_term(keys, old));
            }
            match &new {
                Some(t) => {
                    let mac = mac::key_term(keys, t);
                    txn.save_term(t, &mac)?;
                    sums.add(keys, Table::KeyTerm, &mac);
                }
                None => txn.delete_term(term)?,
            }
            changes.terms.push((term, new));
        }
        changes.generation = base.generation + 1;
        txn.set_state_root(&root(keys, &sums, changes.generation, &base.carried))?;
        changes.sums = sums;
        Ok(changes)
    }
}

/// The root over `sums` at `generation`; quarantined tables keep their stored MAC.
fn root(keys: &Unlocked, sums: &Sums, generation: u64, carried: &BTreeMap<Table, Vec<u8>>) -> Root {
    let mut tables = Vec::with_capacity(SUMMED.len() * crate::crypto::MAC_LEN);
    for table in SUMMED {
        match carried.get(&table) {
            Some(stored) => tables.extend_from_slice(stored),
            None => tables.extend_from_slice(&sums.table_mac(keys, generation, table)),
        }
    }
    Root::new(keys, generation, tables)
}
