//! The gRPC services, one file each. The mapping from domain errors to
//! `tonic::Status` happens here and nowhere else.

mod admin;
mod agent;
mod broker;

pub use admin::AdminApi;
pub use agent::AgentApi;
pub use broker::BrokerApi;

use crate::audit::Actor;
use crate::crypto::CryptoError;
use crate::identity::Peer;
use crate::state::{PolicyChange, Secret, VersionRow};
use crate::vault::{RotationRow, SecretRef, VaultError};
use tonic::Status;
use vault_proto::v1;

/// The status codes are a contract with vaultctl's exit codes (see admin.proto):
/// FAILED_PRECONDITION is used for "sealed" and "not initialized" only.
impl From<VaultError> for Status {
    fn from(e: VaultError) -> Status {
        let msg = e.to_string();
        match e {
            VaultError::Sealed | VaultError::Uninitialized => Status::failed_precondition(msg),
            // Stored data changed behind vaultd's back: not served, reported.
            VaultError::Integrity(_) => Status::data_loss(msg),
            VaultError::AlreadyInitialized | VaultError::ClientExists(_) => Status::already_exists(msg),
            VaultError::TokenRefused | VaultError::TokenUnknown => Status::unauthenticated(msg),
            VaultError::TooManyTokens(_) => Status::resource_exhausted(msg),
            VaultError::RateLimited(wait) => {
                let mut status = Status::resource_exhausted(msg);
                if let Ok(v) = wait.as_millis().to_string().parse() {
                    status.metadata_mut().insert("retry-after-ms", v);
                }
                status
            }
            VaultError::WrongPassphrase | VaultError::AccessEnded(_) => Status::permission_denied(msg),
            VaultError::RotationInProgress(_) | VaultError::RotationFailed(_) => Status::aborted(msg),
            VaultError::Rotator(_) => Status::invalid_argument(msg),
            VaultError::NotFound { .. }
            | VaultError::ClientNotFound(_)
            | VaultError::TokenNotFound(_)
            | VaultError::IncidentNotFound(_) => Status::not_found(msg),
            VaultError::EmptyPassphrase
            | VaultError::InvalidName { .. }
            | VaultError::InvalidPattern(_)
            | VaultError::InvalidExeSha256
            | VaultError::EmptyValue
            | VaultError::KdfRefused(_)
            | VaultError::ValueTooLarge(_)
            | VaultError::InvalidArgument(_) => Status::invalid_argument(msg),
            VaultError::Crypto(CryptoError::DecryptionFailed) | VaultError::RewrapFailed { .. } => {
                Status::data_loss(msg)
            }
            VaultError::Crypto(CryptoError::KdfParams(_)) => Status::data_loss(msg),
            VaultError::Crypto(_) | VaultError::Store(_) | VaultError::Audit(_) | VaultError::TermsExhausted => {
                // Storage and RNG errors never carry a value; log the detail for the operator.
                tracing::error!(error = %msg, "internal error");
                internal(msg)
            }
        }
    }
}

/// Marks an INTERNAL status as vaultd's own fault. The server answers INTERNAL
/// only with it (and drops it): any other INTERNAL is tonic's, about a request
/// that did not decode, which is INVALID_ARGUMENT (see `server`).
pub const FAULT_HEADER: &str = "x-vaultd-fault";

/// An INTERNAL status: vaultd's fault, not the caller's.
pub(crate) fn internal(message: String) -> Status {
    let mut status = Status::internal(message);
    status.metadata_mut().insert(FAULT_HEADER, tonic::metadata::MetadataValue::from_static("internal"));
    status
}

/// Who sent `req`, as the kernel attested it at accept.
fn actor<T>(socket: &'static str, req: &tonic::Request<T>) -> Actor {
    Actor::peer(socket, Peer::of_request(req).as_ref())
}

/// `version` when a secret can have it: past `i64::MAX` (what the store holds)
/// it names no version, so it is not found like any missing one.
fn existing_version(secret: SecretRef<'_>, version: u64) -> Result<u64, Status> {
    match i64::try_from(version) {
        Ok(_) => Ok(version),
        Err(_) => Err(VaultError::NotFound { env: secret.env.into(), name: secret.name.into() }.into()),
    }
}

/// Runs blocking work (Argon2, fsync) off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, VaultError> + Send + 'static) -> Result<T, Status> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(Status::from),
        Err(_) => Err(internal("internal error: a worker task failed".into())),
    }
}

fn secret_meta(row: impl std::ops::Deref<Target = Secret>) -> v1::SecretMeta {
    v1::SecretMeta {
        env: row.env.clone(),
        name: row.name.clone(),
        provider: row.provider.clone(),
        description: row.description.clone(),
        current_version: row.current_version,
        created_unix: row.created_unix,
        updated_unix: row.updated_unix,
        rotator: row.rotator.clone(),
        rotate_every_secs: row.rotate_every_secs.unwrap_or(0).max(0) as u64,
        grace_secs: row.grace_secs.max(0) as u64,
        next_rotation_unix: row.next_rotation_unix.unwrap_or(0),
        last_rotation: None,
    }
}

fn rotation_info(found: RotationRow) -> v1::RotationInfo {
    let row = found.rotation;
    v1::RotationInfo {
        step: row.step.as_str().into(),
        trigger: row.trigger.as_str().into(),
        from_version: row.from_version,
        new_version: row.new_version.unwrap_or(0),
        error: row.error.unwrap_or_default(),
        started_unix: row.started_unix,
        updated_unix: row.updated_unix,
    }
}

/// Longest schedule or grace period accepted: ten years.
const MAX_PERIOD_SECS: u64 = 10 * 365 * 86_400;

/// The wire's policy change, checked: a known rotator in canonical spelling and
/// periods within bounds.
fn policy_change(change: Option<v1::RotationChange>) -> Result<PolicyChange, Status> {
    let Some(change) = change else { return Ok(PolicyChange::default()) };
    let rotator = match change.rotator {
        None => None,
        Some(text) => {
            // Canonical spelling; a `;check=ROUTE` after it is kept as given.
            let (rotator, check) = crate::rotation::split_check(&text);
            let rotator = rotator
                .parse::<crate::rotation::Rotator>()
                .map_err(|e| Status::invalid_argument(format!("invalid rotator: {e}")))?;
            Some(crate::rotation::with_check(&rotator.to_string(), check))
        }
    };
    let period = |what: &str, secs: u64| {
        if secs > MAX_PERIOD_SECS {
            return Err(Status::invalid_argument(format!("{what} is longer than ten years")));
        }
        Ok(secs as i64)
    };
    let every_secs = match change.rotate_every_secs {
        None => None,
        Some(0) => Some(None),
        Some(secs) => Some(Some(period("the rotation period", secs)?)),
    };
    let grace_secs = change.grace_secs.map(|g| period("the grace period", g)).transpose()?;
    Ok(PolicyChange { rotator, every_secs, grace_secs })
}

fn version_meta(row: VersionRow) -> v1::VersionMeta {
    v1::VersionMeta {
        version: row.version,
        state: row.state.as_str().into(),
        created_unix: row.created_unix,
        expires_unix: row.expires_unix.unwrap_or(0),
    }
}
