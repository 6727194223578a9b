//! What the credential broker needs of the vault besides `authorize_use`.

use super::{SecretRef, Vault, VaultError};
use crate::audit::Actor;
use crate::crypto::{SecretBytes, VersionId};
use std::future::Future;
use std::pin::Pin;

/// The credential broker's provider checks, for rotations whose new values
/// are tested by one (`--check ROUTE`) instead of a hook's test step. The
/// vault asks; the broker (which knows the routes) answers.
pub trait ProviderCheck: Send + Sync {
    /// Why `route` may not test values of `secret` (`None`: it may). Only a
    /// route that carries `secret` may: a new value goes nowhere the old one
    /// did not.
    fn refuses(&self, route: &str, secret: SecretRef<'_>) -> Option<String>;

    /// Whether `value`, version `version` of `secret`, works at `route`'s
    /// provider (`Err`: why not, never the value). Recorded and, when it
    /// fails, alerted like any provider check.
    fn check<'a>(
        &'a self,
        actor: &'a Actor,
        route: &'a str,
        secret: SecretRef<'a>,
        version: u64,
        value: &'a SecretBytes,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;
}

impl Vault {
    /// Every stored value, every version still held, for the broker's
    /// exfiltration guard. A version that does not decrypt is left out (and
    /// reported where it is read).
    pub fn stored_values(&self) -> Result<Vec<SecretBytes>, VaultError> {
        let keys = self.keys()?;
        let sealed: Vec<_> = {
            let image = self.image();
            image
                .secrets()
                .flat_map(|s| {
                    s.versions.iter().filter_map(|(v, version)| {
                        Some((s.env.clone(), s.name.clone(), *v, version.ciphertext.clone()?))
                    })
                })
                .collect()
        };
        Ok(sealed
            .iter()
            .filter_map(|(env, name, version, ct)| {
                keys.open_version(&VersionId { env, name, version: *version }, ct).ok()
            })
            .collect())
    }

    /// vaultd's own use of a secret (an alert's bot token, a provider check):
    /// its current value, recorded first as `secret.use` by vaultd with the
    /// purpose. Never for a caller.
    pub fn use_for_vaultd(
        &self,
        secret: super::SecretRef<'_>,
        purpose: &'static str,
    ) -> Result<(u64, SecretBytes), VaultError> {
        use crate::audit::{Actor, Event, Kind, Outcome};
        let result = self.read_current(secret);
        let event =
            Event::new(Kind::SecretUse, if result.is_ok() { Outcome::Ok } else { Outcome::Failed }, &Actor::vaultd())
                .secret(secret.env, secret.name)
                .with("purpose", purpose);
        let event = match &result {
            Ok((version, _)) => event.with("version", *version),
            Err(e) => event.with("reason", e.to_string()),
        };
        self.record(event)?;
        result
    }

    /// The broker's checks, for rotations whose test is one (set once, at start).
    pub fn set_provider_check(&self, check: Box<dyn ProviderCheck>) {
        let _ = self.provider_check.set(check);
    }

    /// The broker's checks, or why there are none.
    pub(super) fn provider_check(&self) -> Result<&dyn ProviderCheck, String> {
        self.provider_check.get().map(|c| &**c).ok_or_else(|| "no [broker] is configured to check with".into())
    }
}
