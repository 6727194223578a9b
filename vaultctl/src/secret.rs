//! [`Secret`]: bytes that must not leak — a passphrase, a secret value.

use zeroize::Zeroizing;

/// Secret bytes, wiped on drop. Deliberately without `Debug`, `Display` or
/// `Clone`, so they cannot end up in an error message or a log line by accident;
/// reading them is the named call [`Secret::expose`].
pub(crate) struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    /// Takes ownership of `bytes` without copying them.
    pub(crate) fn new(bytes: Vec<u8>) -> Self {
        Secret(Zeroizing::new(bytes))
    }

    pub(crate) fn expose(&self) -> &[u8] {
        &self.0
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Moves the bytes (no copy) into a request message. From there tonic owns
    /// them and does not wipe them; moving at least leaves no second copy.
    pub(crate) fn into_request_bytes(mut self) -> Vec<u8> {
        std::mem::take(&mut *self.0)
    }
}
