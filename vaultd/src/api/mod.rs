//! The gRPC services, one file each. The mapping from domain errors to
//! `tonic::Status` happens here and nowhere else.

mod admin;
mod agent;

pub use admin::AdminApi;
pub use agent::AgentApi;

use crate::audit::Actor;
use crate::crypto::CryptoError;
use crate::identity::Peer;
use crate::store::{SecretRow, VersionRow};
use crate::vault::VaultError;
use tonic::Status;
use vault_proto::v1;

/// The status codes are a contract with vaultctl's exit codes (see admin.proto):
/// FAILED_PRECONDITION is used for "sealed" and "not initialized" only.
impl From<VaultError> for Status {
    fn from(e: VaultError) -> Status {
        let msg = e.to_string();
        match e {
            VaultError::Sealed | VaultError::Uninitialized => Status::failed_precondition(msg),
            VaultError::AlreadyInitialized | VaultError::ClientExists(_) => Status::already_exists(msg),
            VaultError::TokenRefused => Status::unauthenticated(msg),
            VaultError::TooManyTokens(_) => Status::resource_exhausted(msg),
            VaultError::RateLimited(wait) => {
                let mut status = Status::resource_exhausted(msg);
                if let Ok(v) = wait.as_millis().to_string().parse() {
                    status.metadata_mut().insert("retry-after-ms", v);
                }
                status
            }
            VaultError::WrongPassphrase => Status::permission_denied(msg),
            VaultError::NotFound { .. } | VaultError::ClientNotFound(_) | VaultError::TokenNotFound(_) => {
                Status::not_found(msg)
            }
            VaultError::EmptyPassphrase
            | VaultError::InvalidName { .. }
            | VaultError::InvalidPattern(_)
            | VaultError::InvalidExeSha256
            | VaultError::EmptyValue
            | VaultError::KdfRefused(_)
            | VaultError::ValueTooLarge(_) => Status::invalid_argument(msg),
            VaultError::Crypto(CryptoError::DecryptionFailed) | VaultError::RewrapFailed { .. } => {
                Status::data_loss(msg)
            }
            VaultError::Crypto(CryptoError::KdfParams(_)) => Status::data_loss(msg),
            VaultError::Crypto(_) | VaultError::Store(_) | VaultError::Audit(_) | VaultError::TermsExhausted => {
                // Storage and RNG errors never carry a value; log the detail for the operator.
                tracing::error!(error = %msg, "internal error");
                Status::internal(msg)
            }
        }
    }
}

/// Who sent `req`, as the kernel attested it at accept.
fn actor<T>(socket: &'static str, req: &tonic::Request<T>) -> Actor {
    Actor::peer(socket, Peer::of_request(req).as_ref())
}

/// Runs blocking work (Argon2, fsync) off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, VaultError> + Send + 'static) -> Result<T, Status> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(Status::from),
        Err(_) => Err(Status::internal("internal error: a worker task failed")),
    }
}

fn secret_meta(row: SecretRow) -> v1::SecretMeta {
    v1::SecretMeta {
        env: row.env,
        name: row.name,
        provider: row.provider,
        description: row.description,
        current_version: row.current_version,
        created_unix: row.created_unix,
        updated_unix: row.updated_unix,
    }
}

fn version_meta(row: VersionRow) -> v1::VersionMeta {
    v1::VersionMeta {
        version: row.version,
        state: row.state,
        created_unix: row.created_unix,
        expires_unix: row.expires_unix.unwrap_or(0),
    }
}
