//! vaultd's gRPC contract, shared by the daemon, `vaultctl` and Rust agents.
//!
//! An agent wants [`Client`]: `Client::connect_default().await?`, then `get`,
//! `get_many` or `watch` (see [`client`] and `cargo run -p vault-proto --example
//! agent`). Below it, the generated code lives in [`v1`]; [`connect`] opens a
//! channel over a unix socket; [`names`] holds the name rules both sides enforce.

pub mod client;
pub mod names;

pub use client::{Client, Error, Secret, SecretValue, Watch};

#[allow(unreachable_pub, clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("vault.v1");
}

/// The encoded `FileDescriptorSet` of every vault proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/vault_descriptor.bin"));

/// The largest secret value vaultd stores. Provider keys and bot tokens are far
/// smaller; the cap keeps a single request from pinning memory.
pub const MAX_VALUE_LEN: usize = 64 * 1024;

/// The gRPC message size limit both sides apply (but for the admin service's
/// replies, [`MAX_ADMIN_REPLY_LEN`]): a full value plus metadata.
pub const MAX_MESSAGE_LEN: usize = MAX_VALUE_LEN + 16 * 1024;

/// The largest reply of the admin service (an audit query's entries). Only
/// vaultd sends these, so the bound is on what one reply may hold, not on what
/// a caller may push into vaultd.
pub const MAX_ADMIN_REPLY_LEN: usize = 16 << 20;

/// Default socket paths: where `deploy/systemd` puts them (`RuntimeDirectory=vaultd`).
pub const DEFAULT_AGENT_SOCKET: &str = "/run/vaultd/agent.sock";
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/vaultd/admin.sock";

use std::path::PathBuf;
use tonic::transport::{Channel, Endpoint};

/// Opens a gRPC channel to a vaultd socket. Fails fast (not lazily) so a caller can
/// tell "daemon unreachable" apart from an error the daemon returned.
pub async fn connect(socket: impl Into<PathBuf>) -> Result<Channel, tonic::transport::Error> {
    let socket = socket.into();
    // The URI is required by the API but unused: the connector dials the socket.
    Endpoint::from_static("http://vaultd.local")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
}

/// An agent client with vaultd's message size limits applied.
pub fn agent_client(channel: Channel) -> v1::agent_client::AgentClient<Channel> {
    v1::agent_client::AgentClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_LEN)
        .max_encoding_message_size(MAX_MESSAGE_LEN)
}

/// An admin client with vaultd's message size limits applied.
pub fn admin_client(channel: Channel) -> v1::admin_client::AdminClient<Channel> {
    v1::admin_client::AdminClient::new(channel)
        .max_decoding_message_size(MAX_ADMIN_REPLY_LEN)
        .max_encoding_message_size(MAX_MESSAGE_LEN)
}

macro_rules! redacted_debug {
    ($ty:ty { $($field:ident),* } redact { $($secret:ident),* }) => {
        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($ty))
                    $(.field(stringify!($field), &self.$field))*
                    $(.field(stringify!($secret), &format_args!("[redacted]")))*
                    .finish()
            }
        }
    };
}

redacted_debug!(v1::GetSecretResponse { env, name, version } redact { value });
redacted_debug!(v1::InitRequest {} redact { passphrase });
redacted_debug!(v1::UnlockRequest {} redact { passphrase });
redacted_debug!(v1::PutSecretRequest { secret, provider, description, rotation } redact { value });
redacted_debug!(v1::RotateSecretRequest { secret } redact { value });
redacted_debug!(v1::ShowSecretResponse { secret } redact { value });
redacted_debug!(v1::HashValueRequest {} redact { value });
redacted_debug!(v1::CreateTokenResponse { info } redact { token });
redacted_debug!(v1::RekeyRequest { kdf } redact { passphrase, new_passphrase });

#[cfg(test)]
mod tests {
    use super::v1;

    #[test]
    fn debug_of_value_carrying_messages_is_redacted() {
        let put = v1::PutSecretRequest { value: b"hunter2-token".to_vec(), ..Default::default() };
        let unlock = v1::UnlockRequest { passphrase: b"correct horse".to_vec() };
        let rekey = v1::RekeyRequest {
            passphrase: b"hunter2 old".to_vec(),
            new_passphrase: b"hunter2 new".to_vec(),
            kdf: None,
        };
        let rotate = v1::RotateSecretRequest { value: b"hunter2-rotated".to_vec(), ..Default::default() };
        let shown = format!("{put:?} {unlock:?} {rekey:?} {rotate:?}");
        assert!(shown.contains("[redacted]"), "{shown}");
        assert!(!shown.contains("hunter2") && !shown.contains("horse"), "{shown}");
        // 104 is 'h': prost's derived Debug would print the bytes as numbers.
        assert!(!shown.contains("104"), "{shown}");
    }
}
