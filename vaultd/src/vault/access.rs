//! Clients (agent identities), their grants, and their bearer tokens.

use super::{Vault, VaultError};
use crate::audit::{Actor, Event, Outcome};
use crate::crypto::{self, SecretBytes};
use crate::store::{ClientRow, NewToken, TokenRow, Txn};
use std::time::Duration;
use vault_proto::names;

/// Live tokens a client may hold at once.
pub const MAX_TOKENS_PER_CLIENT: u64 = 100;

pub(super) fn check_patterns(patterns: &[String]) -> Result<(), VaultError> {
    patterns.iter().try_for_each(|p| names::validate_pattern(p).map_err(VaultError::InvalidPattern))
}

impl Vault {
    pub fn clients(&self) -> Result<Vec<ClientRow>, VaultError> {
        self.keys()?;
        Ok(self.store.clients()?)
    }

    /// Adds a client with its first grants.
    pub fn client_add(&self, actor: &Actor, client: ClientRow) -> Result<ClientRow, VaultError> {
        names::validate(&client.name).map_err(|why| VaultError::InvalidName { what: "client name", why })?;
        check_patterns(&client.grants)?;
        if let Some(sha) = &client.exe_sha256
            && !(sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        {
            return Err(VaultError::InvalidExeSha256);
        }
        self.keys()?;
        let event = Event::new("client.add", Outcome::Ok, actor)
            .with("client", client.name.clone())
            .with("uid", client.uid)
            .with("gid", client.gid)
            .with("exe", client.exe.clone())
            .with("exe_sha256", client.exe_sha256.clone())
            .with("grants", client.grants.clone());
        self.client_change(&client.name.clone(), event, |txn| {
            if !txn.client_add(&client)? {
                return Err(VaultError::ClientExists(client.name.clone()));
            }
            Ok(true)
        })
    }

    pub fn client_remove(&self, actor: &Actor, name: &str) -> Result<(), VaultError> {
        self.keys()?;
        self.write(|txn| {
            if !txn.client_remove(name)? {
                return Err(VaultError::ClientNotFound(name.into()));
            }
            Ok(((), vec![Event::new("client.remove", Outcome::Ok, actor).with("client", name)]))
        })?;
        self.notify();
        Ok(())
    }

    pub fn client_set_enabled(&self, actor: &Actor, name: &str, enabled: bool) -> Result<ClientRow, VaultError> {
        self.keys()?;
        let kind = if enabled { "client.enable" } else { "client.disable" };
        let event = Event::new(kind, Outcome::Ok, actor).with("client", name);
        self.client_change(name, event, |txn| Ok(txn.client_set_enabled(name, enabled)?))
    }

    /// Adds (`grant`) or removes grant patterns.
    pub fn client_grants(
        &self,
        actor: &Actor,
        name: &str,
        patterns: &[String],
        grant: bool,
    ) -> Result<ClientRow, VaultError> {
        check_patterns(patterns)?;
        self.keys()?;
        let kind = if grant { "client.grant" } else { "client.ungrant" };
        let event = Event::new(kind, Outcome::Ok, actor).with("client", name).with("patterns", patterns.to_vec());
        self.client_change(name, event, |txn| {
            Ok(if grant { txn.client_grant(name, patterns)? } else { txn.client_ungrant(name, patterns)? })
        })
    }

    /// Applies `change` (false: no such client), records `event`, returns the client.
    pub(super) fn client_change(
        &self,
        name: &str,
        event: Event,
        change: impl FnOnce(&Txn<'_>) -> Result<bool, VaultError>,
    ) -> Result<ClientRow, VaultError> {
        let row = self.write(|txn| {
            if !change(txn)? {
                return Err(VaultError::ClientNotFound(name.into()));
            }
            let row = txn.client(name)?.ok_or_else(|| VaultError::ClientNotFound(name.into()))?;
            Ok((row, vec![event]))
        })?;
        self.notify();
        Ok(row)
    }

    /// Creates a token for `client`; returns it (shown once, stored only hashed)
    /// with its metadata. Bound to the client's uid unless `any_uid`.
    pub fn token_create(
        &self,
        actor: &Actor,
        client: &str,
        ttl: Option<Duration>,
        idle: Option<Duration>,
        uses: Option<u32>,
        any_uid: bool,
    ) -> Result<(SecretBytes, TokenRow), VaultError> {
        let keys = self.keys()?;
        let secret = crypto::random_secret(32)?;
        let token = SecretBytes::new(format!("vt_{}", crypto::hex(secret.expose())).into_bytes());
        let accessor = crypto::hex(crypto::random_secret(8)?.expose());
        let hash = keys.token_hash(token.expose());
        let now = crate::store::now_unix();
        let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        let row = self.write(|txn| {
            let owner = txn.client(client)?.ok_or_else(|| VaultError::ClientNotFound(client.into()))?;
            if txn.tokens_active(client, now)? >= MAX_TOKENS_PER_CLIENT {
                return Err(VaultError::TooManyTokens(client.into()));
            }
            let new = NewToken {
                accessor: &accessor,
                hash: &hash,
                client,
                bind_uid: (!any_uid).then_some(owner.uid),
                created_unix: now,
                expires_unix: ttl.map(|t| now.saturating_add(secs(t))),
                idle_secs: idle.map(secs),
                uses: uses.map(i64::from),
            };
            txn.token_insert(&new)?;
            let row = TokenRow {
                accessor: accessor.clone(),
                client: client.into(),
                bind_uid: new.bind_uid,
                created_unix: now,
                expires_unix: new.expires_unix,
                idle_secs: new.idle_secs,
                uses_left: new.uses,
                last_used_unix: None,
                revoked_unix: None,
            };
            let event = Event::new("token.create", Outcome::Ok, actor)
                .with("accessor", accessor.clone())
                .with("client", client)
                .with("bind_uid", new.bind_uid)
                .with("expires_unix", new.expires_unix)
                .with("idle_secs", new.idle_secs)
                .with("uses", new.uses);
            Ok((row, vec![event]))
        })?;
        Ok((token, row))
    }

    pub fn tokens(&self) -> Result<Vec<TokenRow>, VaultError> {
        self.keys()?;
        Ok(self.store.tokens()?)
    }

    /// Revokes one token by accessor, or (`None`) every live one; returns how many.
    pub fn token_revoke(&self, actor: &Actor, accessor: Option<&str>) -> Result<u64, VaultError> {
        self.keys()?;
        let now = crate::store::now_unix();
        let revoked = self.write(|txn| {
            if let Some(a) = accessor
                && !txn.token_exists(a)?
            {
                return Err(VaultError::TokenNotFound(a.into()));
            }
            let revoked = txn.token_revoke(accessor, now)?;
            let event = Event::new("token.revoke", Outcome::Ok, actor)
                .with("accessor", accessor.unwrap_or("*"))
                .with("revoked", revoked);
            Ok((revoked, vec![event]))
        })?;
        self.notify();
        Ok(revoked)
    }
}
