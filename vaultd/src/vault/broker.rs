//! What the credential broker needs of the vault besides `authorize_use`.

use super::{Vault, VaultError};
use crate::crypto::{SecretBytes, VersionId};

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
        use crate::audit::{Actor, Event, Outcome};
        let result = self.read_current(secret);
        let event =
            Event::new("secret.use", if result.is_ok() { Outcome::Ok } else { Outcome::Failed }, &Actor::vaultd())
                .secret(secret.env, secret.name)
                .with("purpose", purpose);
        let event = match &result {
            Ok((version, _)) => event.with("version", *version),
            Err(e) => event.with("reason", e.to_string()),
        };
        self.record(event)?;
        result
    }
}
