//! The agent service: reads, for the callers the accept-time policy admitted.

use super::actor;
use crate::vault::{SecretRef, Vault};
use std::sync::Arc;
use tonic::{Request, Response, Status};
use vault_proto::v1::{self, agent_server::Agent};

pub struct AgentApi {
    vault: Arc<Vault>,
}

impl AgentApi {
    pub fn new(vault: Arc<Vault>) -> Self {
        AgentApi { vault }
    }
}

#[tonic::async_trait]
impl Agent for AgentApi {
    async fn get_secret(&self, req: Request<v1::GetSecretRequest>) -> Result<Response<v1::GetSecretResponse>, Status> {
        let actor = actor("agent", &req);
        let peer = crate::identity::Peer::of_request(&req);
        let req = req.into_inner();
        let secret = SecretRef::parse(&req.env, &req.name)?;
        // A read is a short indexed SELECT on the reader connection and one AES-GCM
        // open: cheaper inline than a hop to the blocking pool. Its audit record
        // goes through the group commit, which never blocks this worker.
        let (version, value) = self.vault.get(&actor, peer.as_ref(), secret).await?;
        tracing::debug!(env = secret.env, name = secret.name, version, "secret read");
        Ok(Response::new(v1::GetSecretResponse {
            env: secret.env.into(),
            name: secret.name.into(),
            version,
            value: value.expose().to_vec(),
        }))
    }
}
