//! Sockets, listeners and shutdown. The server takes bound listeners and a shutdown
//! future, so a test can bind sockets in a temp dir and run it.

use crate::api::{AdminApi, AgentApi};
use crate::audit::{Actor, Event, Outcome};
use crate::identity::Peer;
use crate::policy::{self, Socket};
use crate::vault::Vault;
use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Server;
use vault_proto::MAX_MESSAGE_LEN;
use vault_proto::v1::{admin_server::AdminServer, agent_server::AgentServer};

/// Concurrent HTTP/2 streams one connection may open.
const MAX_STREAMS_PER_CONNECTION: u32 = 64;
/// A request that takes longer than this is cancelled (Argon2 at the ceiling
/// parameters is the slowest legitimate call).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Binds a unix socket at `path` with `mode`. A stale socket file left by a crash
/// is replaced; a live one (another vaultd answering) or a non-socket is refused.
pub async fn bind(path: &Path, mode: u32) -> io::Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        if UnixStream::connect(path).await.is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("another vaultd is listening on {}", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    // The process umask is 077, so the socket is born owner-only; `mode` may then
    // loosen the agent socket for agents running as other users.
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

/// Accepted connections that the socket's policy admits; others are closed at
/// once, and recorded.
fn admitted(
    listener: UnixListener,
    socket: Socket,
    owner: u32,
    vault: Arc<Vault>,
) -> impl tokio_stream::Stream<Item = io::Result<UnixStream>> {
    UnixListenerStream::new(listener).filter(move |conn| match conn {
        Ok(stream) => {
            let peer = Peer::of(stream);
            let ok = policy::may_connect(socket, peer.as_ref(), owner);
            if !ok {
                tracing::warn!(%socket, uid = peer.map(|p| p.uid), pid = peer.and_then(|p| p.pid), "connection refused");
                let actor = Actor::peer(socket.name(), peer.as_ref());
                vault.record_detached(Event::new("connection.refused", Outcome::Denied, &actor));
            }
            ok
        }
        Err(_) => true,
    })
}

/// Serves the agent and admin APIs (plus gRPC health and reflection on both) until
/// `shutdown` completes, then drains in-flight requests.
pub async fn serve(
    vault: Arc<Vault>,
    agent: UnixListener,
    admin: UnixListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let owner = rustix::process::geteuid().as_raw();
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<AgentServer<AgentApi>>().await;
    health_reporter.set_serving::<AdminServer<AdminApi>>().await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(vault_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .expect("the embedded descriptor sets are generated at build time and valid")
    };
    let builder = || Server::builder().max_concurrent_streams(MAX_STREAMS_PER_CONNECTION).timeout(REQUEST_TIMEOUT);

    let agent_api = AgentServer::new(AgentApi::new(vault.clone()))
        .max_decoding_message_size(MAX_MESSAGE_LEN)
        .max_encoding_message_size(MAX_MESSAGE_LEN);
    let admin_api = AdminServer::new(AdminApi::new(vault.clone()))
        .max_decoding_message_size(MAX_MESSAGE_LEN)
        .max_encoding_message_size(MAX_MESSAGE_LEN);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(());
    let stopped = |mut rx: tokio::sync::watch::Receiver<()>| async move {
        let _ = rx.changed().await;
    };
    let agent_server = builder()
        .add_service(health.clone())
        .add_service(reflection())
        .add_service(agent_api)
        .serve_with_incoming_shutdown(admitted(agent, Socket::Agent, owner, vault.clone()), stopped(stop_rx.clone()));
    let admin_server = builder()
        .add_service(health)
        .add_service(reflection())
        .add_service(admin_api)
        .serve_with_incoming_shutdown(admitted(admin, Socket::Admin, owner, vault), stopped(stop_rx));
    let trigger = async move {
        shutdown.await;
        let _ = stop_tx.send(());
        Ok(())
    };
    tokio::try_join!(agent_server, admin_server, trigger)?;
    Ok(())
}
