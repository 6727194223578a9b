//! The vault: the store plus the lock state, and the operations the API serves.
//!
//! Sealed means no key is in memory; every operation but `status`, `init` and
//! `unlock` then fails with [`VaultError::Sealed`]. Nothing here knows about gRPC.

use crate::crypto::{self, CryptoError, KdfParams, SecretBytes, Unlocked, VersionId};
use crate::store::{SecretLabels, SecretRow, Store, StoreError, VersionRow};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use vault_proto::names::{self, NameError};

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("the vault is sealed; run `vaultctl unlock`")]
    Sealed,
    #[error("the vault is not initialized; run `vaultctl init`")]
    Uninitialized,
    #[error("the vault is already initialized")]
    AlreadyInitialized,
    #[error("wrong passphrase")]
    WrongPassphrase,
    #[error("the passphrase is empty")]
    EmptyPassphrase,
    #[error("secret {env}/{name} not found")]
    NotFound { env: String, name: String },
    #[error("invalid {what}: {why}")]
    InvalidName { what: &'static str, why: NameError },
    #[error("the value is empty")]
    EmptyValue,
    #[error("the value is {0} bytes; the limit is {max} bytes", max = vault_proto::MAX_VALUE_LEN)]
    ValueTooLarge(usize),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for VaultError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::AlreadyInitialized => VaultError::AlreadyInitialized,
            other => VaultError::Store(other),
        }
    }
}

/// A validated `env/name`.
#[derive(Debug, Clone, Copy)]
pub struct SecretRef<'a> {
    pub env: &'a str,
    pub name: &'a str,
}

impl<'a> SecretRef<'a> {
    /// Validates both parts; an empty environment means [`names::DEFAULT_ENV`].
    pub fn parse(env: &'a str, name: &'a str) -> Result<Self, VaultError> {
        let env = names::env_or_default(env);
        names::validate(env).map_err(|why| VaultError::InvalidName { what: "environment", why })?;
        names::validate(name).map_err(|why| VaultError::InvalidName { what: "secret name", why })?;
        Ok(SecretRef { env, name })
    }

    fn version(&self, version: u64) -> VersionId<'a> {
        VersionId { env: self.env, name: self.name, version }
    }

    fn not_found(&self) -> VaultError {
        VaultError::NotFound { env: self.env.into(), name: self.name.into() }
    }
}

/// What `status` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub initialized: bool,
    pub sealed: bool,
    pub secrets: u64,
    pub key_term: u32,
    pub kdf: Option<KdfParams>,
    pub schema_version: u32,
}

pub struct Vault {
    store: Store,
    /// `None` while sealed. Readers clone the `Arc` and drop the lock at once, so a
    /// seal never waits on a read; the keys are wiped when the last clone drops.
    keys: RwLock<Option<Arc<Unlocked>>>,
    /// Serializes init and unlock: each runs Argon2 with 64 MiB, and a burst of
    /// them must neither exhaust memory nor make guessing cheaper.
    kdf_gate: Mutex<()>,
}

impl Vault {
    /// Opens the vault in `data_dir`, sealed.
    pub fn open(data_dir: &Path) -> Result<Vault, VaultError> {
        let store = Store::open(data_dir)?;
        Ok(Vault { store, keys: RwLock::new(None), kdf_gate: Mutex::new(()) })
    }

    fn keys(&self) -> Result<Arc<Unlocked>, VaultError> {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner()).clone();
        match keys {
            Some(keys) => Ok(keys),
            None if self.store.header()?.is_none() => Err(VaultError::Uninitialized),
            None => Err(VaultError::Sealed),
        }
    }

    fn set_keys(&self, keys: Option<Unlocked>) {
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = keys.map(Arc::new);
    }

    pub fn status(&self) -> Result<Status, VaultError> {
        let header = self.store.header()?;
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner()).clone();
        Ok(Status {
            initialized: header.is_some(),
            sealed: keys.is_none(),
            secrets: if keys.is_some() { self.store.count_secrets()? } else { 0 },
            key_term: keys.map_or(0, |k| k.newest_term()),
            kdf: header.map(|(h, _)| h.kdf),
            schema_version: self.store.schema_version(),
        })
    }

    /// Creates the key hierarchy and leaves the vault unlocked. Runs Argon2: call
    /// from a blocking context.
    pub fn init(&self, passphrase: &SecretBytes) -> Result<(), VaultError> {
        if passphrase.is_empty() {
            return Err(VaultError::EmptyPassphrase);
        }
        let _gate = self.kdf_gate.lock().unwrap_or_else(|p| p.into_inner());
        if self.store.header()?.is_some() {
            return Err(VaultError::AlreadyInitialized);
        }
        let (header, term, unlocked) = crypto::create(passphrase, KdfParams::for_new_vault())?;
        self.store.initialize(&header, &term)?;
        self.set_keys(Some(unlocked));
        Ok(())
    }

    /// Checks the passphrase and loads the keys. A wrong passphrase changes
    /// nothing, also when the vault is already unlocked. Runs Argon2: call from a
    /// blocking context.
    pub fn unlock(&self, passphrase: &SecretBytes) -> Result<(), VaultError> {
        if passphrase.is_empty() {
            return Err(VaultError::EmptyPassphrase);
        }
        let _gate = self.kdf_gate.lock().unwrap_or_else(|p| p.into_inner());
        let (header, terms) = self.store.header()?.ok_or(VaultError::Uninitialized)?;
        let unlocked = Unlocked::open(passphrase, &header, &terms).map_err(|e| match e {
            CryptoError::WrongPassphrase => VaultError::WrongPassphrase,
            other => VaultError::Crypto(other),
        })?;
        self.set_keys(Some(unlocked));
        Ok(())
    }

    /// Drops the keys (wiped once in-flight reads finish).
    pub fn seal(&self) {
        self.set_keys(None);
    }

    /// Stores `value` as the new current version; returns its number. Fsyncs:
    /// call from a blocking context.
    pub fn put(&self, secret: SecretRef<'_>, labels: &SecretLabels, value: &SecretBytes) -> Result<u64, VaultError> {
        if value.is_empty() {
            return Err(VaultError::EmptyValue);
        }
        if value.len() > vault_proto::MAX_VALUE_LEN {
            return Err(VaultError::ValueTooLarge(value.len()));
        }
        let keys = self.keys()?;
        self.store.put(secret.env, secret.name, labels, |version| {
            Ok::<_, VaultError>(keys.seal_version(&secret.version(version), value.expose())?)
        })
    }

    /// The current version's number and value.
    pub fn get(&self, secret: SecretRef<'_>) -> Result<(u64, SecretBytes), VaultError> {
        let keys = self.keys()?;
        let (version, ciphertext) = self.store.current(secret.env, secret.name)?.ok_or_else(|| secret.not_found())?;
        Ok((version, keys.open_version(&secret.version(version), &ciphertext)?))
    }

    pub fn describe(&self, secret: SecretRef<'_>) -> Result<SecretRow, VaultError> {
        self.keys()?;
        self.store.secret(secret.env, secret.name)?.ok_or_else(|| secret.not_found())
    }

    pub fn list(&self, env: &str) -> Result<Vec<SecretRow>, VaultError> {
        let env = names::env_or_default(env);
        names::validate(env).map_err(|why| VaultError::InvalidName { what: "environment", why })?;
        self.keys()?;
        Ok(self.store.list(env)?)
    }

    pub fn versions(&self, secret: SecretRef<'_>) -> Result<Vec<VersionRow>, VaultError> {
        self.keys()?;
        self.store.versions(secret.env, secret.name)?.ok_or_else(|| secret.not_found())
    }

    /// Deletes the secret and every version; returns how many versions went.
    pub fn delete(&self, secret: SecretRef<'_>) -> Result<u64, VaultError> {
        self.keys()?;
        self.store.delete(secret.env, secret.name)?.ok_or_else(|| secret.not_found())
    }
}
