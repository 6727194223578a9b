//! Clients (agent identities), their grants, and their bearer tokens.

use super::{Vault, VaultError};
use crate::audit::{Actor, Event, Kind, Outcome};
use crate::crypto::{self, SecretBytes};
use crate::limits::{Pauses, Presenter};
use crate::state::{Client, Draft, Grant, GrantKind, Token};
use std::time::Duration;
use vault_proto::names;

/// What a new token is good for.
#[derive(Debug, Clone, Default)]
pub struct TokenSpec {
    pub ttl: Option<Duration>,
    /// Refused after this long unused.
    pub idle: Option<Duration>,
    pub uses: Option<u32>,
    /// Usable from any uid (default: only the client's).
    pub any_uid: bool,
    /// The executable the caller must run (absolute path).
    pub bind_exe: Option<String>,
}

/// Live tokens a client may hold at once.
pub const MAX_TOKENS_PER_CLIENT: u64 = 100;

pub(super) fn check_patterns(patterns: &[String]) -> Result<(), VaultError> {
    patterns.iter().try_for_each(|p| names::validate_pattern(p).map_err(VaultError::InvalidPattern))
}

impl Vault {
    /// The bad-token pause, asked before a token is looked at (agent socket and
    /// broker alike): a paused presenter is refused, and the refusal recorded.
    pub fn unpaused(&self, pauses: &Pauses, presenters: &[Presenter], actor: &Actor) -> Result<(), Duration> {
        pauses.allowed(presenters).inspect_err(|_| {
            let event = Event::new(Kind::TokenRefused, Outcome::Denied, actor);
            self.record_detached(event.with("reason", "paused after failed attempts"));
        })
    }

    pub fn clients(&self) -> Result<Vec<Client>, VaultError> {
        self.keys()?;
        Ok(self.image().clients().map(|c| Client::clone(c)).collect())
    }

    /// Adds a client with its first grants.
    pub fn client_add(&self, actor: &Actor, client: Client) -> Result<Client, VaultError> {
        names::validate(&client.name).map_err(|why| VaultError::InvalidName { what: "client name", why })?;
        let patterns: Vec<String> = client.grants.keys().cloned().collect();
        check_patterns(&patterns)?;
        if let Some(sha) = &client.exe_sha256
            && !(sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        {
            return Err(VaultError::InvalidExeSha256);
        }
        self.keys()?;
        let event = Event::new(Kind::ClientAdd, Outcome::Ok, actor)
            .with("client", client.name.clone())
            .with("uid", client.uid)
            .with("gid", client.gid)
            .with("exe", client.exe.clone())
            .with("exe_sha256", client.exe_sha256.clone())
            .with("token_only", client.token_only)
            .with("grants", patterns)
            .with("use_only", client.grants.values().any(|g| g.kind == GrantKind::Use));
        let name = client.name.clone();
        let now = crate::clock::now_unix();
        self.client_change(&name, event, |state| {
            if state.client(&client.name)?.is_some() {
                return Err(VaultError::ClientExists(client.name.clone()));
            }
            let grants = client.grants.iter().map(|(p, g)| (p.clone(), Grant { created_unix: now, ..*g })).collect();
            state.insert_client(Client { id: 0, enabled: true, created_unix: now, grants, ..client })?;
            Ok(())
        })
    }

    pub fn client_remove(&self, actor: &Actor, name: &str) -> Result<(), VaultError> {
        self.keys()?;
        self.write(|c| {
            if c.state.client(name)?.is_none() {
                return Err(VaultError::ClientNotFound(name.into()));
            }
            c.state.remove_client(name)?;
            // Its tokens go with it.
            for accessor in c.state.token_accessors() {
                if c.state.token(&accessor)?.is_some_and(|t| t.client == name) {
                    c.state.remove_token(&accessor);
                }
            }
            Ok(((), vec![Event::new(Kind::ClientRemove, Outcome::Ok, actor).with("client", name)]))
        })?;
        self.notify();
        Ok(())
    }

    pub fn client_set_enabled(&self, actor: &Actor, name: &str, enabled: bool) -> Result<Client, VaultError> {
        self.keys()?;
        let kind = if enabled { Kind::ClientEnable } else { Kind::ClientDisable };
        let event = Event::new(kind, Outcome::Ok, actor).with("client", name);
        self.client_change(name, event, |state| {
            found(state, name)?.enabled = enabled;
            Ok(())
        })
    }

    /// Adds grant patterns of `kind` (`None`: removes them). A pattern granted
    /// again takes the new kind.
    pub fn client_grants(
        &self,
        actor: &Actor,
        name: &str,
        patterns: &[String],
        kind: Option<GrantKind>,
    ) -> Result<Client, VaultError> {
        check_patterns(patterns)?;
        self.keys()?;
        let mut event = match kind {
            Some(kind) => Event::new(Kind::ClientGrant, Outcome::Ok, actor).with("kind", kind.as_str()),
            None => Event::new(Kind::ClientUngrant, Outcome::Ok, actor),
        };
        event = event.with("client", name).with("patterns", patterns.to_vec());
        let now = crate::clock::now_unix();
        self.client_change(name, event, |state| {
            let client = found(state, name)?;
            for p in patterns {
                match kind {
                    Some(kind) => {
                        client.grants.insert(p.clone(), Grant { kind, created_unix: now });
                    }
                    None => {
                        client.grants.remove(p);
                    }
                }
            }
            Ok(())
        })
    }

    /// Applies `change`, records `event`, returns the client.
    pub(super) fn client_change(
        &self,
        name: &str,
        event: Event,
        change: impl FnOnce(&mut Draft<'_>) -> Result<(), VaultError>,
    ) -> Result<Client, VaultError> {
        let row = self.write(|c| {
            change(&mut c.state)?;
            let row = c.state.client(name)?.cloned().ok_or_else(|| VaultError::ClientNotFound(name.into()))?;
            Ok((row, vec![event]))
        })?;
        self.notify();
        Ok(row)
    }

    /// Creates a token for `client`; returns it (shown once, stored only hashed)
    /// with its metadata. Bound to the client's uid unless `spec.any_uid`, and
    /// to an executable if `spec.bind_exe` names one.
    pub fn token_create(
        &self,
        actor: &Actor,
        client: &str,
        spec: &TokenSpec,
    ) -> Result<(SecretBytes, Token), VaultError> {
        let TokenSpec { ttl, idle, uses, any_uid, bind_exe } = spec.clone();
        if let Some(exe) = bind_exe.as_deref().map(std::path::Path::new) {
            if !exe.is_absolute() {
                return Err(VaultError::InvalidArgument("the executable a token is bound to must be an absolute path"));
            }
            // Bound to a file no caller can run: refuse now, not at every use.
            if !exe.is_file() {
                return Err(VaultError::InvalidArgument(
                    "the executable a token is bound to is not a file vaultd can see",
                ));
            }
        }
        let keys = self.keys()?;
        let secret = crypto::random_secret(32)?;
        let token = SecretBytes::new(format!("vt_{}", crypto::hex(secret.expose())).into_bytes());
        let accessor = crypto::hex(crypto::random_secret(8)?.expose());
        let hash = keys.token_hash(token.expose()).to_vec();
        let now = crate::clock::now_unix();
        let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        let row = self.write(|c| {
            let owner = c.state.client(client)?.cloned().ok_or_else(|| VaultError::ClientNotFound(client.into()))?;
            let live = c
                .state
                .image()
                .tokens()
                .filter(|t| t.client == client && t.revoked_unix.is_none() && t.expires_unix.is_none_or(|e| e > now))
                .count() as u64;
            if live >= MAX_TOKENS_PER_CLIENT {
                return Err(VaultError::TooManyTokens(client.into()));
            }
            let row = Token {
                accessor: accessor.clone(),
                hash: hash.clone(),
                client: client.into(),
                bind_uid: (!any_uid).then_some(owner.uid),
                bind_exe: bind_exe.clone(),
                created_unix: now,
                expires_unix: ttl.map(|t| now.saturating_add(secs(t))),
                idle_secs: idle.map(secs),
                uses_left: uses.map(i64::from),
                last_used_unix: None,
                revoked_unix: None,
            };
            c.state.insert_token(row.clone())?;
            let event = Event::new(Kind::TokenCreate, Outcome::Ok, actor)
                .with("accessor", accessor.clone())
                .with("client", client)
                .with("bind_uid", row.bind_uid)
                .with("bind_exe", row.bind_exe.clone())
                .with("expires_unix", row.expires_unix)
                .with("idle_secs", row.idle_secs)
                .with("uses", row.uses_left);
            Ok((row, vec![event]))
        })?;
        Ok((token, row))
    }

    /// Writes back the uses of tokens without a use limit noted since their rows
    /// were written (`state::Image::note_use`): the daemon does every few
    /// seconds, and a seal does. Not fsynced: losing one to a power cut can only
    /// make a token look idle sooner.
    pub fn flush_token_uses(&self) -> Result<(), VaultError> {
        let pending = self.image().uses_to_write();
        if pending.is_empty() || self.is_sealed() {
            return Ok(());
        }
        self.commit(false, |c| {
            for (accessor, at) in &pending {
                if let Some(t) = c.state.token_mut(accessor)? {
                    t.last_used_unix = t.last_used_unix.max(Some(*at));
                }
            }
            Ok(((), vec![]))
        })
    }

    pub fn tokens(&self) -> Result<Vec<Token>, VaultError> {
        self.keys()?;
        let image = self.image();
        // As listed: with the uses noted since the rows were written.
        let mut all: Vec<Token> =
            image.tokens().map(|t| Token { last_used_unix: image.last_use(t), ..Token::clone(t) }).collect();
        all.sort_by(|a, b| (a.created_unix, &a.accessor).cmp(&(b.created_unix, &b.accessor)));
        Ok(all)
    }

    /// Revokes one token by accessor, or (`None`) every live one; returns how many.
    pub fn token_revoke(&self, actor: &Actor, accessor: Option<&str>) -> Result<u64, VaultError> {
        self.keys()?;
        let now = crate::clock::now_unix();
        let revoked = self.write(|c| {
            let accessors = match accessor {
                Some(a) if c.state.token(a)?.is_none() => return Err(VaultError::TokenNotFound(a.into())),
                Some(a) => vec![a.to_owned()],
                None => c.state.token_accessors(),
            };
            let mut revoked = 0;
            for a in accessors {
                if let Some(t) = c.state.token_mut(&a)?
                    && t.revoke(now)
                {
                    revoked += 1;
                }
            }
            let event = Event::new(Kind::TokenRevoke, Outcome::Ok, actor)
                .with("accessor", accessor.unwrap_or("*"))
                .with("revoked", revoked);
            Ok((revoked, vec![event]))
        })?;
        self.notify();
        Ok(revoked)
    }
}

fn found<'d>(state: &'d mut Draft<'_>, name: &str) -> Result<&'d mut Client, VaultError> {
    state.client_mut(name)?.ok_or_else(|| VaultError::ClientNotFound(name.into()))
}
