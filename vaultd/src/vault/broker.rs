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
}
