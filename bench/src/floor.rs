//! The floor: the cheapest server that answers the same call over the same kind
//! of socket — what vaultd's GetSecret would cost if vaultd did no work at all.
//!
//! It serves the `vault.v1.Agent` service itself, from vault-proto's generated
//! code, so the request, the reply, the method path and the client (`load.rs`)
//! are exactly those of a vaultd read: the only difference is the handler, which
//! echoes the requested env and name(s) back with version 1 and a fixed value of
//! the bench's size. (A new Agent RPC must be echoed here too: the trait says so.) The server is built like vaultd's (tonic's `Server` with the
//! same stream limit, timeout and message limits, a multi-threaded tokio runtime)
//! minus the peer-uid interceptor, health and reflection.
//!
//! It runs as its own process: the bench re-executes itself with the hidden
//! `floor-server` subcommand ([`serve`]), and [`Floor`] stops it on drop.

use crate::vaultd::Process;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};
use vault_proto::v1::{self, agent_server::Agent, agent_server::AgentServer};

/// As vaultd's server.rs: streams per connection and the request timeout.
const MAX_STREAMS_PER_CONNECTION: u32 = 64;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

struct Echo {
    value: Vec<u8>,
}

impl Echo {
    fn reply(&self, env: &str, name: String) -> v1::GetSecretResponse {
        let env = if env.is_empty() { vault_proto::names::DEFAULT_ENV } else { env };
        v1::GetSecretResponse { env: env.into(), name, version: 1, value: self.value.clone() }
    }
}

#[tonic::async_trait]
impl Agent for Echo {
    async fn get_secret(&self, req: Request<v1::GetSecretRequest>) -> Result<Response<v1::GetSecretResponse>, Status> {
        let req = req.into_inner();
        Ok(Response::new(self.reply(&req.env, req.name)))
    }

    async fn get_secrets(
        &self,
        req: Request<v1::GetSecretsRequest>,
    ) -> Result<Response<v1::GetSecretsResponse>, Status> {
        let req = req.into_inner();
        let secrets = req.names.into_iter().map(|name| self.reply(&req.env, name)).collect();
        Ok(Response::new(v1::GetSecretsResponse { secrets }))
    }

    type WatchSecretsStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<v1::GetSecretsResponse, Status>> + Send>>;

    /// The floor measures unary calls only; watch fan-out is measured on vaultd alone.
    async fn watch_secrets(
        &self,
        _: Request<v1::GetSecretsRequest>,
    ) -> Result<Response<Self::WatchSecretsStream>, Status> {
        Err(Status::unimplemented("the floor server has no watch"))
    }

    /// Not measured: `vaultctl run`'s listing is once per program start.
    async fn list_granted(
        &self,
        _: Request<v1::ListGrantedRequest>,
    ) -> Result<Response<v1::ListGrantedResponse>, Status> {
        Err(Status::unimplemented("the floor server has no listing"))
    }
}

/// The hidden `floor-server` subcommand: serve on `socket` until SIGTERM/SIGINT
/// (or until the bench that started it dies).
pub(crate) fn serve(socket: &Path) -> anyhow::Result<()> {
    crate::die_with_parent()?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let listener = tokio::net::UnixListener::bind(socket)?;
        let echo = AgentServer::new(Echo { value: crate::secret_value() })
            .max_decoding_message_size(vault_proto::MAX_MESSAGE_LEN)
            .max_encoding_message_size(vault_proto::MAX_MESSAGE_LEN);
        tonic::transport::Server::builder()
            .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
            .timeout(REQUEST_TIMEOUT)
            .add_service(echo)
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), stopped())
            .await?;
        Ok(())
    })
}

async fn stopped() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        // Without handlers the default action (exit) still stops it.
        _ => std::future::pending().await,
    }
}

/// A running floor server process.
pub(crate) struct Floor {
    pub(crate) socket: PathBuf,
    process: Process,
}

impl Floor {
    /// Starts `bench floor-server` on `dir/floor.sock` and waits until it listens.
    pub(crate) async fn start(dir: &Path) -> anyhow::Result<Floor> {
        let socket = dir.join("floor.sock");
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("floor-server").arg("--socket").arg(&socket);
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::inherit());
        let mut process = Process::spawn("the floor server", &mut cmd)?;
        process.wait_listening(&socket, None).await?;
        Ok(Floor { socket, process })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.process.pid()
    }
}
