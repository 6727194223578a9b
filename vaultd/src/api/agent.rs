//! The agent service: reads, for the callers the accept-time policy admitted.
//!
//! What one caller may hold at once is capped here, per uid (the owner has
//! slots of its own): reads in flight and watch streams. So is the bad-token
//! pause, per connection and token prefix.

use super::{actor, existing_version};
use crate::audit::Actor;
use crate::crypto::SecretBytes;
use crate::identity::Peer;
use crate::limits::{self, Full, LimitsConfig, Pauses, Presenter, Slot, Slots};
use crate::server::ConnectionId;
use crate::vault::{SecretRef, Update, Vault, VaultError};
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use vault_proto::v1::{self, agent_server::Agent};

pub struct AgentApi {
    vault: Arc<Vault>,
    /// The vault's owner (vaultd's uid), whose slots are its own.
    owner: u32,
    /// Open watch streams: each holds a task's worth of memory.
    watches: Arc<Slots>,
    /// Reads being served.
    reads: Arc<Slots>,
    pauses: Pauses,
}

impl AgentApi {
    pub fn new(vault: Arc<Vault>, owner: u32, limits: &LimitsConfig) -> Self {
        AgentApi {
            vault,
            owner,
            watches: Slots::new(limits::MAX_WATCHES, limits.watches_per_uid, limits::OWNER_WATCHES),
            reads: Slots::new(usize::MAX, limits.requests_per_uid, 0),
            pauses: Pauses::default(),
        }
    }

    /// A slot of `slots` for `caller`, or RESOURCE_EXHAUSTED naming the cap.
    fn slot(&self, slots: &Arc<Slots>, caller: &Caller, what: &str) -> Result<Slot, Status> {
        slots.take(caller.slot_key).map_err(|full| {
            Status::resource_exhausted(match full {
                Full::Caller(n) => format!("too many {what} from this user (at most {n} at once)"),
                Full::All(n) => format!("too many {what} (at most {n} at once)"),
            })
        })
    }

    /// Runs `read` (which identifies the caller) under the bad-token pause: a
    /// paused presenter is refused before its token is looked at, and the
    /// token's fate counts for its connection and prefix.
    async fn with_token<T>(
        &self,
        caller: &Caller,
        read: impl Future<Output = Result<T, VaultError>>,
    ) -> Result<T, Status> {
        let Some(presenters) = &caller.presenters else { return Ok(read.await?) };
        if let Err(wait) = self.vault.unpaused(&self.pauses, presenters, &caller.actor) {
            return Err(VaultError::RateLimited(wait).into());
        }
        let result = read.await;
        self.pauses.settle(presenters, &result);
        Ok(result?)
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<v1::GetSecretsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Agent for AgentApi {
    async fn get_secret(&self, req: Request<v1::GetSecretRequest>) -> Result<Response<v1::GetSecretResponse>, Status> {
        let caller = Caller::of(&req, self.owner)?;
        let _reading = self.slot(&self.reads, &caller, "reads in flight")?;
        let req = req.into_inner();
        let secret = SecretRef::parse(&req.env, &req.name)?;
        let wanted = existing_version(secret, req.version)?;
        // A read is a short indexed SELECT on a reader connection and one AES-GCM
        // open: cheaper inline than a hop to the blocking pool. Its audit record
        // goes through the group commit.
        let read = self.vault.get(&caller.actor, caller.peer.as_ref(), caller.token.as_ref(), secret, wanted);
        let (version, value) = self.with_token(&caller, read).await?;
        tracing::debug!(env = secret.env, name = secret.name, version, "secret read");
        Ok(Response::new(reply(secret, version, &value)))
    }

    async fn get_secrets(
        &self,
        req: Request<v1::GetSecretsRequest>,
    ) -> Result<Response<v1::GetSecretsResponse>, Status> {
        let caller = Caller::of(&req, self.owner)?;
        let _reading = self.slot(&self.reads, &caller, "reads in flight")?;
        let req = req.into_inner();
        if req.names.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!("at most {MAX_BATCH} names per call")));
        }
        let secrets = req.names.iter().map(|n| SecretRef::parse(&req.env, n)).collect::<Result<Vec<_>, _>>()?;
        let read = self.vault.get_many(&caller.actor, caller.peer.as_ref(), caller.token.as_ref(), &secrets);
        let values = self.with_token(&caller, read).await?;
        let secrets = secrets.iter().zip(&values).map(|(s, (version, value))| reply(*s, *version, value)).collect();
        Ok(Response::new(v1::GetSecretsResponse { secrets }))
    }

    async fn list_granted(
        &self,
        req: Request<v1::ListGrantedRequest>,
    ) -> Result<Response<v1::ListGrantedResponse>, Status> {
        let caller = Caller::of(&req, self.owner)?;
        let _reading = self.slot(&self.reads, &caller, "reads in flight")?;
        let env = vault_proto::names::env_or_default(&req.get_ref().env).to_owned();
        vault_proto::names::validate(&env).map_err(|why| VaultError::InvalidName { what: "environment", why })?;
        let list = self.vault.granted(&caller.actor, caller.peer.as_ref(), caller.token.as_ref(), &env);
        let names = self.with_token(&caller, list).await?;
        Ok(Response::new(v1::ListGrantedResponse { names }))
    }

    type WatchSecretsStream = WatchStream;

    async fn watch_secrets(&self, req: Request<v1::GetSecretsRequest>) -> Result<Response<WatchStream>, Status> {
        let caller = Caller::of(&req, self.owner)?;
        let slot = self.slot(&self.watches, &caller, "watch streams")?;
        let req = req.into_inner();
        if req.names.is_empty() || req.names.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!("watch 1 to {MAX_BATCH} names")));
        }
        let secrets = req.names.iter().map(|n| SecretRef::parse(&req.env, n)).collect::<Result<Vec<_>, _>>()?;
        let open = self.vault.watch(&caller.actor, caller.peer.as_ref(), caller.token.as_ref(), &secrets);
        let (watcher, first) = self.with_token(&caller, open).await?;
        let vault = self.vault.clone();
        // Each item is computed when the transport asks for it, from the latest
        // state: a reader that falls behind skips straight to the newest values.
        let state = (vault, watcher, slot, Some(first), false);
        let stream = futures_util::stream::unfold(state, |(vault, mut watcher, slot, first, ended)| async move {
            if ended {
                return None;
            }
            let next = match first {
                Some(first) => Ok(first),
                None => vault.watch_next(&mut watcher).await,
            };
            let (item, ended) = match next {
                Ok(updates) => (Ok(updates_reply(&updates)), false),
                Err(e) => (Err(Status::from(e)), true),
            };
            Some((item, (vault, watcher, slot, None, ended)))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

fn updates_reply(updates: &[Update]) -> v1::GetSecretsResponse {
    let secrets = updates
        .iter()
        .map(|u| v1::GetSecretResponse {
            env: u.env.clone(),
            name: u.name.clone(),
            version: u.version,
            value: u.value.expose().to_vec(),
        })
        .collect();
    v1::GetSecretsResponse { secrets }
}

/// Names per `GetSecrets` call: a startup batch, not a dump of the vault.
const MAX_BATCH: usize = 256;

fn reply(secret: SecretRef<'_>, version: u64, value: &SecretBytes) -> v1::GetSecretResponse {
    v1::GetSecretResponse { env: secret.env.into(), name: secret.name.into(), version, value: value.expose().to_vec() }
}

/// Who is calling.
struct Caller {
    /// The audit actor.
    actor: Actor,
    /// The kernel's credentials.
    peer: Option<Peer>,
    /// A bearer token, if one was presented (`authorization: Bearer vt_…`).
    token: Option<SecretBytes>,
    /// With a token: whom its failures pause.
    presenters: Option<[Presenter; 2]>,
    /// Whose slots it takes: its uid, `None` for the owner.
    slot_key: Option<u32>,
}

impl Caller {
    fn of<T>(req: &Request<T>, owner: u32) -> Result<Caller, Status> {
        let peer = Peer::of_request(req);
        let uid = peer.as_ref().map_or(u32::MAX, |p| p.uid);
        let mut headers = req.metadata().get_all("authorization").iter();
        let token = match (headers.next(), headers.next()) {
            (None, _) => None,
            (Some(value), None) => {
                let token =
                    value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).filter(|t| t.starts_with("vt_"));
                // A malformed header is refused like a bad token, without echoing it.
                Some(token.map(|t| SecretBytes::new(t.as_bytes().to_vec())).ok_or(VaultError::TokenRefused)?)
            }
            // Which one would count is anyone's guess: neither does.
            (Some(_), Some(_)) => return Err(VaultError::TokenRefused.into()),
        };
        let connection = req.extensions().get::<ConnectionId>().map_or(0, |c| c.0);
        let presenters = token.as_ref().map(|token| Presenter::of(connection, uid, token));
        let slot_key = (uid != owner).then_some(uid);
        Ok(Caller { actor: actor("agent", req), peer, token, presenters, slot_key })
    }
}
