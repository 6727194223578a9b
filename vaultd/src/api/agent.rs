//! The agent service: reads, for the callers the accept-time policy admitted.

use super::actor;
use crate::audit::Actor;
use crate::crypto::SecretBytes;
use crate::identity::Peer;
use crate::vault::{SecretRef, Update, Vault, VaultError};
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use vault_proto::v1::{self, agent_server::Agent};

pub struct AgentApi {
    vault: Arc<Vault>,
    /// Open watch streams, bounded: each holds a task's worth of memory.
    watches: Arc<Semaphore>,
}

impl AgentApi {
    pub fn new(vault: Arc<Vault>) -> Self {
        AgentApi { vault, watches: Arc::new(Semaphore::new(MAX_WATCHES)) }
    }
}

/// Watch streams open at once, across every connection.
const MAX_WATCHES: usize = 4096;

type WatchStream = Pin<Box<dyn Stream<Item = Result<v1::GetSecretsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Agent for AgentApi {
    async fn get_secret(&self, req: Request<v1::GetSecretRequest>) -> Result<Response<v1::GetSecretResponse>, Status> {
        let (actor, peer, token) = caller(&req)?;
        let req = req.into_inner();
        let secret = SecretRef::parse(&req.env, &req.name)?;
        let wanted = req.version;
        // A read is a short indexed SELECT on a reader connection and one AES-GCM
        // open: cheaper inline than a hop to the blocking pool. Its audit record
        // goes through the group commit.
        let (version, value) = self.vault.get(&actor, peer.as_ref(), token.as_ref(), secret, wanted).await?;
        tracing::debug!(env = secret.env, name = secret.name, version, "secret read");
        Ok(Response::new(reply(secret, version, &value)))
    }

    async fn get_secrets(
        &self,
        req: Request<v1::GetSecretsRequest>,
    ) -> Result<Response<v1::GetSecretsResponse>, Status> {
        let (actor, peer, token) = caller(&req)?;
        let req = req.into_inner();
        if req.names.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!("at most {MAX_BATCH} names per call")));
        }
        let secrets = req.names.iter().map(|n| SecretRef::parse(&req.env, n)).collect::<Result<Vec<_>, _>>()?;
        let values = self.vault.get_many(&actor, peer.as_ref(), token.as_ref(), &secrets).await?;
        let secrets = secrets.iter().zip(&values).map(|(s, (version, value))| reply(*s, *version, value)).collect();
        Ok(Response::new(v1::GetSecretsResponse { secrets }))
    }

    async fn list_granted(
        &self,
        req: Request<v1::ListGrantedRequest>,
    ) -> Result<Response<v1::ListGrantedResponse>, Status> {
        let (actor, peer, token) = caller(&req)?;
        let env = vault_proto::names::env_or_default(&req.get_ref().env).to_owned();
        vault_proto::names::validate(&env).map_err(|why| VaultError::InvalidName { what: "environment", why })?;
        let names = self.vault.granted(&actor, peer.as_ref(), token.as_ref(), &env).await?;
        Ok(Response::new(v1::ListGrantedResponse { names }))
    }

    type WatchSecretsStream = WatchStream;

    async fn watch_secrets(&self, req: Request<v1::GetSecretsRequest>) -> Result<Response<WatchStream>, Status> {
        let permit = self
            .watches
            .clone()
            .try_acquire_owned()
            .map_err(|_| Status::resource_exhausted(format!("too many watch streams (at most {MAX_WATCHES})")))?;
        let (actor, peer, token) = caller(&req)?;
        let req = req.into_inner();
        if req.names.is_empty() || req.names.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!("watch 1 to {MAX_BATCH} names")));
        }
        let secrets = req.names.iter().map(|n| SecretRef::parse(&req.env, n)).collect::<Result<Vec<_>, _>>()?;
        let (watcher, first) = self.vault.watch(&actor, peer.as_ref(), token.as_ref(), &secrets).await?;
        let vault = self.vault.clone();
        // Each item is computed when the transport asks for it, from the latest
        // state: a reader that falls behind skips straight to the newest values.
        let state = (vault, watcher, permit, Some(first), false);
        let stream = futures_util::stream::unfold(state, |(vault, mut watcher, permit, first, ended)| async move {
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
            Some((item, (vault, watcher, permit, None, ended)))
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

/// Who is calling: the audit actor, the kernel's credentials, and a bearer token
/// if one was presented (`authorization: Bearer vt_…`).
fn caller<T>(req: &Request<T>) -> Result<(Actor, Option<Peer>, Option<SecretBytes>), Status> {
    let token = match req.metadata().get("authorization") {
        None => None,
        Some(value) => {
            let token = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).filter(|t| t.starts_with("vt_"));
            // A malformed header is refused like a bad token, without echoing it.
            Some(token.map(|t| SecretBytes::new(t.as_bytes().to_vec())).ok_or(crate::vault::VaultError::TokenRefused)?)
        }
    };
    Ok((actor("agent", req), Peer::of_request(req), token))
}
