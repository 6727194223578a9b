//! Dialing vaultd, and turning its gRPC errors into ones vaultctl can print and
//! classify (see `exit`).

use std::path::Path;

use anyhow::Context as _;
use tonic::transport::Channel;
use vault_proto::v1::admin_client::AdminClient;
use vault_proto::v1::agent_client::AgentClient;

use crate::Global;

/// A client for the admin socket (management, owner only).
pub(crate) async fn admin(global: &Global) -> anyhow::Result<AdminClient<Channel>> {
    Ok(vault_proto::admin_client(dial(&global.admin_socket).await?))
}

/// The broker's admin service, on the admin socket.
pub(crate) async fn broker_admin(
    global: &Global,
) -> anyhow::Result<vault_proto::v1::broker_admin_client::BrokerAdminClient<Channel>> {
    Ok(vault_proto::v1::broker_admin_client::BrokerAdminClient::new(dial(&global.admin_socket).await?))
}

/// A client for the agent socket (reads, as an agent would make them).
pub(crate) async fn agent(global: &Global) -> anyhow::Result<AgentClient<Channel>> {
    Ok(vault_proto::agent_client(dial(&global.socket).await?))
}

/// `VAULT_TOKEN`, as [`take_token`] found it.
static TOKEN: std::sync::OnceLock<Option<zeroize::Zeroizing<Vec<u8>>>> = std::sync::OnceLock::new();

/// Takes `VAULT_TOKEN` out of vaultctl's environment, and out of what
/// `/proc/PID/environ` shows, keeping it for [`with_token`]: a program that
/// `exec` starts cannot find it in its parent. Call it first thing in `main`,
/// while vaultctl has one thread.
pub(crate) fn take_token() -> anyhow::Result<()> {
    let token = vaultd::process::take_env("VAULT_TOKEN").context("taking VAULT_TOKEN out of the environment")?;
    let token = token.filter(|t| !t.is_empty()).map(|t| zeroize::Zeroizing::new(t.into_encoded_bytes()));
    let _ = TOKEN.set(token);
    Ok(())
}

/// Adds the bearer token from `VAULT_TOKEN`, if it was set, to an agent request.
/// A token comes only from the environment, never from argv.
pub(crate) fn with_token<T>(mut request: tonic::Request<T>) -> anyhow::Result<tonic::Request<T>> {
    if let Some(token) = TOKEN.get().and_then(Option::as_ref) {
        let header = format!("Bearer {}", String::from_utf8_lossy(token));
        let value = header.parse().map_err(|_| crate::exit::usage("VAULT_TOKEN is not a valid token"))?;
        request.metadata_mut().insert("authorization", value);
    }
    Ok(request)
}

/// Connects eagerly, so "daemon unreachable" is its own error (exit 5) rather
/// than surfacing later as a failed call.
async fn dial(socket: &Path) -> anyhow::Result<Channel> {
    vault_proto::connect(socket).await.map_err(|err| {
        // tonic's chain repeats itself ("transport error: X: X"); the root cause
        // (no such file, connection refused, permission denied) is what helps.
        let mut cause: &dyn std::error::Error = &err;
        while let Some(source) = cause.source() {
            cause = source;
        }
        Unreachable { socket: socket.display().to_string(), cause: cause.to_string() }.into()
    })
}

/// vaultd's socket could not be connected to.
#[derive(Debug)]
pub(crate) struct Unreachable {
    socket: String,
    cause: String,
}

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot reach vaultd at {}: {}", self.socket, self.cause)
    }
}

impl std::error::Error for Unreachable {}

/// An error vaultd returned. Displays as the daemon's message alone: a
/// `tonic::Status` prints its code, quotes and metadata, which is noise to an
/// operator. The code is kept for the exit status.
#[derive(Debug)]
pub(crate) struct RpcError {
    code: tonic::Code,
    message: String,
}

impl RpcError {
    pub(crate) fn code(&self) -> tonic::Code {
        self.code
    }
}

impl From<tonic::Status> for RpcError {
    fn from(status: tonic::Status) -> Self {
        // Each socket serves one service: a call the socket does not know means
        // the two were given the other way round.
        let message = if status.code() == tonic::Code::Unimplemented {
            "this socket does not serve that call: are the agent and admin sockets swapped? \
             (--socket/VAULT_SOCKET is the agent socket, --admin-socket/VAULT_ADMIN_SOCKET the admin one)"
                .to_owned()
        } else {
            status.message().to_owned()
        };
        RpcError { code: status.code(), message }
    }
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.message.is_empty() { f.write_str(self.code.description()) } else { f.write_str(&self.message) }
    }
}

impl std::error::Error for RpcError {}

/// Unwraps a call's reply, converting a `Status` into an [`RpcError`].
pub(crate) trait Reply<T> {
    fn reply(self) -> anyhow::Result<T>;
}

impl<T> Reply<T> for Result<tonic::Response<T>, tonic::Status> {
    fn reply(self) -> anyhow::Result<T> {
        self.map(tonic::Response::into_inner).map_err(|status| RpcError::from(status).into())
    }
}

/// A message field proto3 makes optional but vaultd always sets.
pub(crate) fn required<T>(field: Option<T>, what: &str) -> anyhow::Result<T> {
    field.with_context(|| format!("vaultd's reply has no {what}"))
}
