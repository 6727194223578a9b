//! The admin service: init, unlock, seal, status and secret management, for the
//! vault's owner (the accept-time policy admits nobody else).

use super::{blocking, secret_meta, version_meta};
use crate::crypto::SecretBytes;
use crate::store::SecretLabels;
use crate::vault::{SecretRef, Vault};
use std::sync::Arc;
use tonic::{Request, Response, Status};
use vault_proto::v1::{self, admin_server::Admin};

pub struct AdminApi {
    vault: Arc<Vault>,
}

impl AdminApi {
    pub fn new(vault: Arc<Vault>) -> Self {
        AdminApi { vault }
    }

    fn status(&self) -> Result<v1::StatusResponse, Status> {
        let s = self.vault.status()?;
        Ok(v1::StatusResponse {
            initialized: s.initialized,
            sealed: s.sealed,
            version: env!("CARGO_PKG_VERSION").into(),
            secrets: s.secrets,
            key_term: s.key_term,
            kdf: s.kdf.map(|k| v1::KdfParams {
                algorithm: "argon2id".into(),
                memory_kib: k.memory_kib,
                iterations: k.iterations,
                parallelism: k.parallelism,
                insecure_test_profile: k.is_insecure_test_profile(),
            }),
            schema_version: s.schema_version,
        })
    }
}

/// Moves a request's secret bytes into a zeroizing buffer, leaving the message empty.
fn take_secret(bytes: &mut Vec<u8>) -> SecretBytes {
    SecretBytes::new(std::mem::take(bytes))
}

fn secret_ref(r: &Option<v1::SecretRef>) -> Result<SecretRef<'_>, Status> {
    let r = r.as_ref().ok_or_else(|| Status::invalid_argument("missing secret"))?;
    Ok(SecretRef::parse(&r.env, &r.name)?)
}

#[tonic::async_trait]
impl Admin for AdminApi {
    async fn init(&self, req: Request<v1::InitRequest>) -> Result<Response<v1::InitResponse>, Status> {
        let passphrase = take_secret(&mut req.into_inner().passphrase);
        let vault = self.vault.clone();
        blocking(move || vault.init(&passphrase)).await?;
        tracing::info!("vault initialized and unlocked");
        Ok(Response::new(v1::InitResponse { status: Some(self.status()?) }))
    }

    async fn unlock(&self, req: Request<v1::UnlockRequest>) -> Result<Response<v1::UnlockResponse>, Status> {
        let passphrase = take_secret(&mut req.into_inner().passphrase);
        let vault = self.vault.clone();
        match blocking(move || vault.unlock(&passphrase)).await {
            Ok(()) => tracing::info!("vault unlocked"),
            Err(status) => {
                tracing::warn!(reason = status.message(), "unlock refused");
                return Err(status);
            }
        }
        Ok(Response::new(v1::UnlockResponse { status: Some(self.status()?) }))
    }

    async fn seal(&self, _: Request<v1::SealRequest>) -> Result<Response<v1::SealResponse>, Status> {
        self.vault.seal();
        tracing::info!("vault sealed");
        Ok(Response::new(v1::SealResponse { status: Some(self.status()?) }))
    }

    async fn status(&self, _: Request<v1::StatusRequest>) -> Result<Response<v1::StatusResponse>, Status> {
        Ok(Response::new(self.status()?))
    }

    async fn put_secret(&self, req: Request<v1::PutSecretRequest>) -> Result<Response<v1::PutSecretResponse>, Status> {
        let mut req = req.into_inner();
        let value = take_secret(&mut req.value);
        let secret = secret_ref(&req.secret)?;
        let (env, name) = (secret.env.to_owned(), secret.name.to_owned());
        let labels = SecretLabels { provider: req.provider, description: req.description };
        let vault = self.vault.clone();
        let (row, version) = blocking(move || {
            let secret = SecretRef { env: &env, name: &name };
            let version = vault.put(secret, &labels, &value)?;
            Ok((vault.describe(secret)?, version))
        })
        .await?;
        tracing::info!(env = row.env, name = row.name, version, "secret stored");
        Ok(Response::new(v1::PutSecretResponse { secret: Some(secret_meta(row)) }))
    }

    async fn show_secret(
        &self,
        req: Request<v1::ShowSecretRequest>,
    ) -> Result<Response<v1::ShowSecretResponse>, Status> {
        let req = req.into_inner();
        let secret = secret_ref(&req.secret)?;
        let row = self.vault.describe(secret)?;
        let value = if req.reveal {
            let (_, value) = self.vault.get(secret)?;
            tracing::info!(env = secret.env, name = secret.name, "secret revealed to the owner");
            value.expose().to_vec()
        } else {
            Vec::new()
        };
        Ok(Response::new(v1::ShowSecretResponse { secret: Some(secret_meta(row)), value }))
    }

    async fn list_secrets(
        &self,
        req: Request<v1::ListSecretsRequest>,
    ) -> Result<Response<v1::ListSecretsResponse>, Status> {
        let rows = self.vault.list(&req.get_ref().env)?;
        Ok(Response::new(v1::ListSecretsResponse { secrets: rows.into_iter().map(secret_meta).collect() }))
    }

    async fn list_versions(
        &self,
        req: Request<v1::ListVersionsRequest>,
    ) -> Result<Response<v1::ListVersionsResponse>, Status> {
        let rows = self.vault.versions(secret_ref(&req.get_ref().secret)?)?;
        Ok(Response::new(v1::ListVersionsResponse { versions: rows.into_iter().map(version_meta).collect() }))
    }

    async fn delete_secret(
        &self,
        req: Request<v1::DeleteSecretRequest>,
    ) -> Result<Response<v1::DeleteSecretResponse>, Status> {
        let secret = secret_ref(&req.get_ref().secret)?;
        let (env, name) = (secret.env.to_owned(), secret.name.to_owned());
        let vault = self.vault.clone();
        let destroyed = blocking(move || vault.delete(SecretRef { env: &env, name: &name })).await?;
        tracing::info!(env = secret.env, name = secret.name, destroyed, "secret removed");
        Ok(Response::new(v1::DeleteSecretResponse { versions_destroyed: destroyed }))
    }
}
