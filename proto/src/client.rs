//! [`Client`]: what a Rust agent needs from vaultd, in one line at startup.
//!
//! ```no_run
//! # async fn agent() -> Result<(), vault_proto::Error> {
//! let vault = vault_proto::Client::connect_default().await?; // $VAULT_SOCKET, $VAULT_TOKEN, $VAULT_ENV
//! let telegram = vault.get("telegram").await?; // a SecretValue: wiped on drop, Debug prints [redacted]
//! let bot_token = telegram.expose_str().expect("a UTF-8 token");
//! # let _ = bot_token;
//! # Ok(()) }
//! ```
//!
//! Values arrive as [`SecretValue`]s: zeroized on drop, `[redacted]` in `Debug`,
//! no `Display` or `Clone`, read with the named call [`SecretValue::expose`]. The
//! gRPC layer below (tonic, prost) has held the same bytes in its own buffers and
//! does not wipe them; the wrapper makes sure this crate's copy does not outlive
//! its use or reach a log line.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use zeroize::Zeroizing;

use crate::v1::{self, agent_client::AgentClient};

/// Why a call failed. Match on [`Error::code`] to branch the way vaultctl's exit
/// codes do: `NotFound` (no such secret, or not granted: vaultd gives both the same
/// answer), `PermissionDenied` (also how a watch ends when access ends),
/// `Unauthenticated` (the token was refused), `FailedPrecondition` (sealed),
/// `Unavailable` (vaultd unreachable). No variant ever holds a secret value.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing accepted a connection on the socket: vaultd is not running, or the
    /// path is wrong. Displays the root cause (no such file, permission denied),
    /// which is what tells those apart; tonic's own chain repeats itself.
    #[error("cannot reach vaultd at {}: {}", socket.display(), root_cause(cause))]
    Unreachable { socket: PathBuf, cause: tonic::transport::Error },
    /// The bearer token cannot be sent as gRPC metadata (not visible ASCII). The
    /// token itself is not repeated here.
    #[error("the vaultd bearer token (VAULT_TOKEN) is not a valid token")]
    InvalidToken,
    /// vaultd (or the transport, mid-call) answered with an error status.
    #[error("vaultd: {} ({:?})", .0.message(), .0.code())]
    Status(#[from] tonic::Status),
}

impl Error {
    /// The gRPC code this error amounts to: `Unavailable` when vaultd could not
    /// be reached, `Unauthenticated` for a token that could not even be sent.
    pub fn code(&self) -> tonic::Code {
        match self {
            Error::Unreachable { .. } => tonic::Code::Unavailable,
            Error::InvalidToken => tonic::Code::Unauthenticated,
            Error::Status(status) => status.code(),
        }
    }
}

fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

/// A secret value: wiped from memory on drop, shown as `[redacted]` by `Debug`.
/// Deliberately not `Clone` or `Display`; getting the bytes is a named call.
pub struct SecretValue(Zeroizing<Vec<u8>>);

impl SecretValue {
    /// Takes ownership of `bytes` without copying them.
    fn new(bytes: Vec<u8>) -> Self {
        SecretValue(Zeroizing::new(bytes))
    }

    /// The exact bytes vaultd holds.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The value as text: provider API keys and bot tokens are ASCII. Fails (without
    /// showing the bytes) for a binary value.
    pub fn expose_str(&self) -> Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(&self.0)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// One secret from a watch: which one, which version, and its value.
#[derive(Debug)]
pub struct Secret {
    pub env: String,
    pub name: String,
    pub version: u64,
    pub value: SecretValue,
}

impl From<v1::GetSecretResponse> for Secret {
    fn from(mut r: v1::GetSecretResponse) -> Self {
        // Moved, not copied: the only copy left is the one that is wiped.
        let value = SecretValue::new(std::mem::take(&mut r.value));
        Secret { env: r.env, name: r.name, version: r.version, value }
    }
}

/// A connection to vaultd's agent socket, with the caller's environment and
/// bearer token applied to every call. Calls take `&self`; share it (in an `Arc`)
/// rather than connecting again.
///
/// Calls have no deadline of their own: wrap one in `tokio::time::timeout` where
/// a hung daemon must not hang the agent.
pub struct Client {
    agent: AgentClient<Channel>,
    socket: PathBuf,
    env: String,
    token: Option<MetadataValue<Ascii>>,
}

impl Client {
    /// Connects the way vaultctl does: the socket from `VAULT_SOCKET`, else
    /// [`DEFAULT_AGENT_SOCKET`](crate::DEFAULT_AGENT_SOCKET); the environment from
    /// `VAULT_ENV`, else the vault's default; a bearer token from `VAULT_TOKEN`, if
    /// set. Empty variables count as unset.
    pub async fn connect_default() -> Result<Client, Error> {
        let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
        // Checked before dialing: a bad token is a configuration error, not an outage.
        let token = match var("VAULT_TOKEN") {
            Some(token) => Some(bearer(token.to_str().ok_or(Error::InvalidToken)?)?),
            None => None,
        };
        let socket = var("VAULT_SOCKET").map_or_else(|| PathBuf::from(crate::DEFAULT_AGENT_SOCKET), PathBuf::from);
        let mut client = Client::connect(socket).await?;
        client.token = token;
        if let Some(env) = var("VAULT_ENV") {
            // A non-UTF-8 name cannot be valid: vaultd says so (INVALID_ARGUMENT)
            // rather than this silently reading the default environment.
            client.env = env.to_string_lossy().into_owned();
        }
        Ok(client)
    }

    /// Connects to the agent socket at `socket`, with no token and the default
    /// environment; reads no environment variables (see [`Client::connect_default`]).
    /// Fails at once if nothing listens there.
    pub async fn connect(socket: impl AsRef<Path>) -> Result<Client, Error> {
        let socket = socket.as_ref().to_owned();
        match crate::connect(&socket).await {
            Ok(channel) => Ok(Client { agent: crate::agent_client(channel), socket, env: String::new(), token: None }),
            Err(cause) => Err(Error::Unreachable { socket, cause }),
        }
    }

    /// Reads secrets from `env` (`prod`, `staging`, …) instead of the default.
    pub fn with_env(mut self, env: impl Into<String>) -> Self {
        self.env = env.into();
        self
    }

    /// Presents `token` (`vt_…`, from `vaultctl token create`) on every call: for
    /// agents the kernel cannot tell apart, such as a shared uid in containers.
    pub fn with_token(mut self, token: &str) -> Result<Self, Error> {
        self.token = Some(bearer(token)?);
        Ok(self)
    }

    /// The current value of one secret.
    pub async fn get(&self, name: &str) -> Result<SecretValue, Error> {
        let request = v1::GetSecretRequest { env: self.env.clone(), name: name.to_owned(), version: 0 };
        let reply = self.agent.clone().get_secret(self.request(request)).await?.into_inner();
        Ok(Secret::from(reply).value)
    }

    /// Several secrets in one round trip, by name: all of them, or the error for
    /// the first that cannot be read.
    pub async fn get_many(&self, names: &[&str]) -> Result<HashMap<String, SecretValue>, Error> {
        let request = v1::GetSecretsRequest { env: self.env.clone(), names: names.iter().map(|&n| n.into()).collect() };
        let reply = self.agent.clone().get_secrets(self.request(request)).await?.into_inner();
        Ok(reply.secrets.into_iter().map(Secret::from).map(|s| (s.name, s.value)).collect())
    }

    /// Follows secrets as they rotate. The first update comes at once with every
    /// named secret (all or nothing, like [`Client::get_many`]); each later one has
    /// only the secrets whose current version changed. A reader that falls behind
    /// gets the newest values, not a backlog. The watch ends with an error when
    /// access ends (`PermissionDenied`: grant removed, client disabled, token
    /// revoked, revoke-all) or the daemon goes away.
    pub async fn watch(&self, names: &[&str]) -> Result<Watch, Error> {
        let request = v1::GetSecretsRequest { env: self.env.clone(), names: names.iter().map(|&n| n.into()).collect() };
        let stream = self.agent.clone().watch_secrets(self.request(request)).await?.into_inner();
        Ok(Watch { stream })
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.token {
            request.metadata_mut().insert("authorization", token.clone());
        }
        request
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("socket", &self.socket)
            .field("env", &crate::names::env_or_default(&self.env))
            .field("token", &format_args!("{}", if self.token.is_some() { "[set]" } else { "None" }))
            .finish()
    }
}

/// The `authorization` header for `token`, marked sensitive so tonic and hyper
/// never print it (and HTTP/2 never indexes it).
fn bearer(token: &str) -> Result<MetadataValue<Ascii>, Error> {
    let header = Zeroizing::new(format!("Bearer {token}"));
    let mut value = MetadataValue::try_from(header.as_str()).map_err(|_| Error::InvalidToken)?;
    value.set_sensitive(true);
    Ok(value)
}

/// The updates of [`Client::watch`]: call [`Watch::message`] in a loop, or use it
/// as a [`Stream`](futures_core::Stream). After an error it yields nothing more.
#[derive(Debug)]
pub struct Watch {
    stream: tonic::Streaming<v1::GetSecretsResponse>,
}

impl Watch {
    /// The next update: `Ok(None)` when vaultd ended the watch cleanly (it only
    /// does so when shutting down), `Err` when access ended or the connection broke.
    pub async fn message(&mut self) -> Result<Option<Vec<Secret>>, Error> {
        Ok(self.stream.message().await?.map(secrets))
    }
}

impl futures_core::Stream for Watch {
    type Item = Result<Vec<Secret>, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.stream).poll_next(cx).map(|item| item.map(|r| r.map(secrets).map_err(Error::from)))
    }
}

fn secrets(update: v1::GetSecretsResponse) -> Vec<Secret> {
    update.secrets.into_iter().map(Secret::from).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_value_is_redacted_in_debug_and_read_by_name() {
        let secret = Secret::from(v1::GetSecretResponse {
            env: "default".into(),
            name: "telegram".into(),
            version: 3,
            value: b"hunter2-token".to_vec(),
        });
        let shown = format!("{secret:?} {:?}", secret.value);
        assert!(shown.contains("telegram") && shown.contains("version: 3"), "{shown}");
        assert_eq!(shown.matches("[redacted]").count(), 2, "{shown}");
        // 104 is 'h': the bytes printed as numbers would show it.
        assert!(!shown.contains("hunter2") && !shown.contains("104"), "{shown}");
        assert_eq!(secret.value.expose(), b"hunter2-token");
        assert_eq!(secret.value.expose_str().unwrap(), "hunter2-token");
        assert_eq!(secret.value.len(), 13);
        assert!(SecretValue::new(vec![0xff]).expose_str().is_err());
    }

    #[test]
    fn a_token_is_sensitive_and_checked() {
        let value = bearer("vt_hunter2").unwrap();
        assert!(value.is_sensitive());
        assert_eq!(value.to_str().unwrap(), "Bearer vt_hunter2");
        assert!(!format!("{value:?}").contains("hunter2"));
        let err = bearer("vt_bad\ntoken").err().unwrap();
        assert!(matches!(err, Error::InvalidToken));
        assert!(!err.to_string().contains("vt_bad"));
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn a_status_error_shows_the_message_and_code() {
        let err = Error::from(tonic::Status::not_found("no secret default/telegram"));
        assert_eq!(err.to_string(), "vaultd: no secret default/telegram (NotFound)");
        assert_eq!(err.code(), tonic::Code::NotFound);
    }

    #[tokio::test]
    async fn connecting_to_nothing_is_unreachable() {
        let dir = std::env::temp_dir().join(format!("vault-proto-test-{}", std::process::id()));
        let socket = dir.join("no-such.sock");
        let err = Client::connect(&socket).await.err().unwrap();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        let shown = err.to_string();
        assert!(shown.starts_with(&format!("cannot reach vaultd at {}: ", socket.display())), "{shown}");
        assert!(shown.ends_with("No such file or directory (os error 2)"), "{shown}");
    }
}
