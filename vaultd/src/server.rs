//! Sockets, listeners and shutdown. The server takes bound listeners and a shutdown
//! future, so a test can bind sockets in a temp dir and run it.

use crate::api::{AdminApi, AgentApi};
use crate::audit::{Actor, Event, Outcome};
use crate::identity::{AttestedStream, Peer};
use crate::policy::{self, Socket};
use crate::vault::Vault;
use std::future::Future;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{oneshot, watch};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::server::NamedService;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic::{Request, Status};
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;
use tonic_reflection::pb::v1::server_reflection_server::{ServerReflection, ServerReflectionServer};
use vault_proto::v1::{admin_server::AdminServer, agent_server::AgentServer};
use vault_proto::{MAX_ADMIN_REPLY_LEN, MAX_MESSAGE_LEN};

/// Concurrent HTTP/2 streams one connection may open.
const MAX_STREAMS_PER_CONNECTION: u32 = 64;
/// A request that takes longer than this is cancelled (Argon2 at the ceiling
/// parameters is the slowest legitimate call).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How long shutdown waits for open requests before closing their connections.
const DRAIN: Duration = Duration::from_secs(5);

/// Binds a unix socket at `path` with `mode`. A stale socket file left by a crash
/// is replaced; a live one (another vaultd answering) or a non-socket is refused.
pub async fn bind(path: &Path, mode: u32, gid: Option<u32>) -> io::Result<UnixListener> {
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
    create_dir_for(path, mode)?;
    // The process umask is 077, so the socket is born owner-only; `mode` may then
    // loosen the agent socket for agents running as other users.
    let listener = UnixListener::bind(path)?;
    if let Some(gid) = gid {
        // Group first, then mode: the socket is never group-accessible for another group.
        rustix::fs::chown(path, None, Some(rustix::fs::Gid::from_raw(gid)))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

/// Creates the socket's directory if it is missing (`/run/vaultd` outside
/// systemd, which would otherwise create it for `RuntimeDirectory=`): 0700, plus
/// the search bit for group or others when the socket's `mode` lets them connect,
/// so agents can reach the socket without listing the directory. An existing
/// directory is left as it is.
fn create_dir_for(socket: &Path, mode: u32) -> io::Result<()> {
    let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) else { return Ok(()) };
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let search = (if mode & 0o070 != 0 { 0o010 } else { 0 }) | (if mode & 0o007 != 0 { 0o001 } else { 0 });
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700 | search))?;
    tracing::info!(dir = %dir.display(), mode = format!("{:04o}", 0o700 | search), "created the socket directory");
    Ok(())
}

/// Admits a request when the socket's policy admits its caller (as the kernel
/// reported it at accept). A refusal is an answer, PERMISSION_DENIED, not a
/// closed connection, so the caller can tell "denied" from "vaultd is down".
/// Every refusal is recorded.
fn guard(
    socket: Socket,
    owner: u32,
    vault: Arc<Vault>,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |req: Request<()>| {
        let peer = Peer::of_request(&req);
        if policy::may_use(socket, peer.as_ref(), owner) {
            return Ok(req);
        }
        tracing::warn!(%socket, uid = peer.as_ref().map(|p| p.uid), pid = peer.as_ref().and_then(|p| p.pid), "request refused");
        let actor = Actor::peer(socket.name(), peer.as_ref());
        vault.record_detached(Event::new("request.refused", Outcome::Denied, &actor));
        Err(Status::permission_denied(format!("permission denied: this user may not use the {socket} socket")))
    }
}

/// Accepted connections, each attesting its peer at accept. With `cutoff`, each
/// is closed when it changes (revoke-all).
fn attested(
    listener: UnixListener,
    cutoff: Option<watch::Receiver<u64>>,
) -> impl tokio_stream::Stream<Item = io::Result<AttestedStream>> {
    use tokio_stream::StreamExt as _;
    UnixListenerStream::new(listener).map(move |conn| {
        let conn = conn?;
        let link = cutoff.as_ref().and_then(|cutoff| match cut_on_incident(&conn, cutoff.clone()) {
            Ok(link) => Some(link),
            Err(e) => {
                tracing::warn!(error = %e, "cannot arm the revoke-all cutoff for a connection");
                None
            }
        });
        Ok(AttestedStream(conn, link))
    })
}

/// Shuts `conn` down both ways when `cutoff` changes, which makes the server drop
/// the connection and every stream on it. The task holds a duplicate of the
/// descriptor only while the connection is open: dropping the returned sender
/// (with the connection) ends it.
fn cut_on_incident(conn: &UnixStream, mut cutoff: watch::Receiver<u64>) -> io::Result<oneshot::Sender<()>> {
    let fd = rustix::io::dup(conn)?;
    let (open, closed) = oneshot::channel::<()>();
    cutoff.borrow_and_update();
    tokio::spawn(async move {
        tokio::select! {
            _ = closed => {}
            changed = cutoff.changed() => {
                if changed.is_ok() {
                    let _ = rustix::net::shutdown(&fd, rustix::net::Shutdown::Both);
                }
            }
        }
    });
    Ok(open)
}

/// gRPC health and reflection for one socket, naming only the API it serves.
async fn discovery(
    service: &str,
) -> (HealthReporter, HealthServer<impl Health>, ServerReflectionServer<impl ServerReflection>) {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_service_status(service, ServingStatus::Serving).await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(vault_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .with_service_name(service)
        .with_service_name("grpc.health.v1.Health")
        .with_service_name("grpc.reflection.v1.ServerReflection")
        .build_v1()
        .expect("the embedded descriptor sets are generated at build time and valid");
    (reporter, health, reflection)
}

/// Keeps the agent API's health NOT_SERVING while the vault is sealed (every read
/// would fail), so a probe can tell "up but sealed" from "ready". The admin API
/// stays SERVING: unlocking goes through it.
fn follow_seal(vault: Arc<Vault>, reporter: HealthReporter, service: &'static str) -> tokio::task::JoinHandle<()> {
    let mut changes = vault.changes();
    tokio::spawn(async move {
        loop {
            let status = if vault.is_sealed() { ServingStatus::NotServing } else { ServingStatus::Serving };
            reporter.set_service_status(service, status).await;
            if changes.changed().await.is_err() {
                return;
            }
        }
    })
}

/// Serves the agent and admin APIs (plus gRPC health and reflection) until
/// `shutdown` completes, then lets in-flight requests finish for at most
/// [`DRAIN`]: an idle or hung client must not keep vaultd (and its keys) alive.
pub async fn serve(
    vault: Arc<Vault>,
    agent: UnixListener,
    admin: UnixListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let owner = rustix::process::geteuid().as_raw();
    let builder = || Server::builder().max_concurrent_streams(MAX_STREAMS_PER_CONNECTION).timeout(REQUEST_TIMEOUT);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(());
    let stopped = |mut rx: tokio::sync::watch::Receiver<()>| async move {
        let _ = rx.changed().await;
    };

    let agent_api = AgentServer::new(AgentApi::new(vault.clone()))
        .max_decoding_message_size(MAX_MESSAGE_LEN)
        .max_encoding_message_size(MAX_MESSAGE_LEN);
    let (reporter, health, reflection) = discovery(AgentServer::<AgentApi>::NAME).await;
    let agent_health = follow_seal(vault.clone(), reporter, AgentServer::<AgentApi>::NAME);
    let agent_server = builder()
        .add_service(health)
        .add_service(reflection)
        .add_service(InterceptedService::new(agent_api, guard(Socket::Agent, owner, vault.clone())))
        .serve_with_incoming_shutdown(attested(agent, Some(vault.cutoffs())), stopped(stop_rx.clone()));

    let admin_api = AdminServer::new(AdminApi::new(vault.clone()))
        .max_decoding_message_size(MAX_MESSAGE_LEN)
        .max_encoding_message_size(MAX_ADMIN_REPLY_LEN);
    let (_, health, reflection) = discovery(AdminServer::<AdminApi>::NAME).await;
    let admin_server = builder()
        .add_service(health)
        .add_service(reflection)
        .add_service(InterceptedService::new(admin_api, guard(Socket::Admin, owner, vault)))
        .serve_with_incoming_shutdown(attested(admin, None), stopped(stop_rx));

    let servers = async {
        let served = tokio::try_join!(agent_server, admin_server).map(|_| ());
        agent_health.abort();
        served
    };
    tokio::pin!(servers);
    tokio::select! {
        result = &mut servers => return result,
        () = shutdown => {}
    }
    let _ = stop_tx.send(());
    match tokio::time::timeout(DRAIN, servers).await {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!("connections still open {DRAIN:?} after shutdown began; closing them");
            Ok(())
        }
    }
}
