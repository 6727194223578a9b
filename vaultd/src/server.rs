//! Sockets, listeners and shutdown. The server takes bound listeners and a shutdown
//! future, so a test can bind sockets in a temp dir and run it.
//!
//! Each socket has its own accept loop, and each connection a task of its own,
//! which owns the connection: it closes it at once on revoke-all (the cutoff), when
//! the peer has not sent the HTTP/2 preface in time, and gracefully after an idle
//! spell with no open stream or at shutdown. Agent connections are capped per uid
//! and in all, from the file limit, so agents cannot take the descriptors the
//! admin socket (and the vault itself) needs.

use crate::api::{AdminApi, AgentApi, BrokerApi, FAULT_HEADER};
use crate::audit::{Actor, Event, Kind, Outcome};
use crate::identity::{Attestation, Peer};
use crate::limits::{ConnectionCaps, LimitsConfig, OWNER_CONNECTIONS, Slot, Slots};
use crate::policy::{self, Socket};
use crate::vault::Vault;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tonic::codegen::http::{self, HeaderValue};
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::{Code, Status};
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;
use tonic_reflection::pb::v1::server_reflection_server::{ServerReflection, ServerReflectionServer};
use vault_proto::v1::{admin_server::AdminServer, agent_server::AgentServer, broker_admin_server::BrokerAdminServer};
use vault_proto::{MAX_ADMIN_REPLY_LEN, MAX_MESSAGE_LEN};

/// Concurrent HTTP/2 streams one connection may open.
const MAX_STREAMS_PER_CONNECTION: u32 = 64;
/// A request that takes longer than this is cancelled (Argon2 at the ceiling
/// parameters is the slowest legitimate call).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How long shutdown waits for open requests before closing their connections.
const DRAIN: Duration = Duration::from_secs(5);
/// HTTP/2 pings on a connection, and how long an answer may take: a peer that
/// stopped reading is dropped.
const KEEPALIVE: Duration = Duration::from_secs(60);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Request headers vaultd reads (HPACK-decoded, as HTTP/2 counts them), and the
/// most it answers with a gRPC status: a bearer token is under 100 bytes. Past
/// the first the peer gets HTTP 431; between the two, RESOURCE_EXHAUSTED.
const MAX_HEADER_LIST: u32 = 64 << 10;
const MAX_REQUEST_HEADERS: usize = 8 << 10;
/// The client's HTTP/2 preface (RFC 9113 §3.4) and the header of the SETTINGS
/// frame that follows it: a connection has introduced itself once it sent these.
const PREFACE_LEN: usize = 24 + 9;
/// Backing off the accept loop after an error (out of descriptors, memory).
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));
/// Repeated warnings (refused connections, accept errors) at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);
/// The headers every response is checked for, as names made once: looking one
/// up by its text parses the text first, a few hundred instructions per response.
static FAULT: http::HeaderName = http::HeaderName::from_static(FAULT_HEADER);
static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

/// Which connection a request came on (each accepted connection has its own), for
/// what is kept per connection (the bad-token pause).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionId(pub u64);

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

/// A socket's API behind its policy: a request is admitted when the policy
/// admits its caller (as the kernel reported it at accept). A refusal is an
/// answer, PERMISSION_DENIED, not a closed connection, so the caller can tell
/// "denied" from "vaultd is down". Every refusal is recorded.
///
/// A plain service over the HTTP request, not a tonic interceptor: that one
/// turns every request into a tonic request and back, and wraps the reply's
/// body in one more layer, for a check that reads one extension.
#[derive(Clone)]
struct Guarded<S> {
    api: S,
    socket: Socket,
    owner: u32,
    vault: Arc<Vault>,
}

impl<S> Guarded<S> {
    fn new(api: S, socket: Socket, owner: u32, vault: Arc<Vault>) -> Guarded<S> {
        Guarded { api, socket, owner, vault }
    }

    /// `None` when the caller may use this socket, else the refusal to answer with.
    fn refusal(&self, peer: Option<&Peer>) -> Option<Status> {
        if policy::may_use(self.socket, peer, self.owner) {
            return None;
        }
        let socket = self.socket;
        tracing::warn!(%socket, uid = peer.map(|p| p.uid), pid = peer.and_then(|p| p.pid), "request refused");
        let actor = Actor::peer(socket.name(), peer);
        self.vault.record_detached(Event::new(Kind::RequestRefused, Outcome::Denied, &actor));
        Some(Status::permission_denied(format!("permission denied: this user may not use the {socket} socket")))
    }
}

impl<S: NamedService> NamedService for Guarded<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tonic::codegen::Service<http::Request<B>> for Guarded<S>
where
    S: tonic::codegen::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures_util::future::Either<S::Future, std::future::Ready<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.api.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let peer = req.extensions().get::<Attestation>().and_then(|a| a.0.as_ref());
        match self.refusal(peer) {
            None => futures_util::future::Either::Left(self.api.call(req)),
            Some(status) => futures_util::future::Either::Right(std::future::ready(Ok(status.into_http()))),
        }
    }
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
    limits: &LimitsConfig,
    broker: Option<Arc<crate::broker::Broker>>,
    shutdown: impl Future<Output = ()>,
) {
    let owner = rustix::process::geteuid().as_raw();
    let caps = ConnectionCaps::derive(limits, crate::limits::file_limit());
    tracing::info!(connections = caps.total, per_uid = caps.per_uid, "agent connections capped");
    let (stop_tx, stop_rx) = watch::channel(());

    let agent_api = AgentServer::new(AgentApi::new(vault.clone(), owner, limits))
        .max_decoding_message_size(MAX_MESSAGE_LEN)
        .max_encoding_message_size(MAX_MESSAGE_LEN);
    let (reporter, health, reflection) = discovery(AgentServer::<AgentApi>::NAME).await;
    let agent_health = follow_seal(vault.clone(), reporter, AgentServer::<AgentApi>::NAME);
    let agent_loop = Listener {
        listener: agent,
        socket: Socket::Agent,
        api: Guarded::new(agent_api, Socket::Agent, owner, vault.clone()),
        routes: Routes::new(health).add_service(reflection).prepare(),
        owner,
        caps: Some(Slots::new(caps.total, caps.per_uid, OWNER_CONNECTIONS)),
        cutoff: Some(vault.cutoffs()),
        timeouts: (limits.handshake_timeout, limits.idle_timeout),
    }
    .run(stop_rx.clone());

    let admin_api = AdminServer::new(AdminApi::new(vault.clone()))
        .max_decoding_message_size(MAX_MESSAGE_LEN)
        .max_encoding_message_size(MAX_ADMIN_REPLY_LEN);
    let (_, health, reflection) = discovery(AdminServer::<AdminApi>::NAME).await;
    // The broker's admin calls go through the router (the admin API is served
    // directly), behind the same owner-only policy.
    let broker_api = Guarded::new(BrokerAdminServer::new(BrokerApi::new(broker)), Socket::Admin, owner, vault.clone());
    // Owner-only (mode 0600): not capped, and served from the descriptors the
    // agent caps leave.
    let admin_loop = Listener {
        listener: admin,
        socket: Socket::Admin,
        api: Guarded::new(admin_api, Socket::Admin, owner, vault),
        routes: Routes::new(health).add_service(reflection).add_service(broker_api).prepare(),
        owner,
        caps: None,
        cutoff: None,
        timeouts: (limits.handshake_timeout, limits.idle_timeout),
    }
    .run(stop_rx);

    let loops = async {
        tokio::join!(agent_loop, admin_loop);
        agent_health.abort();
    };
    tokio::pin!(loops);
    tokio::select! {
        () = &mut loops => return,
        () = shutdown => {}
    }
    let _ = stop_tx.send(());
    loops.await;
}

/// A request as hyper hands it over, and the answer vaultd's services give.
type Incoming = http::Request<hyper::body::Incoming>;
type Answer = http::Response<tonic::body::Body>;

/// A socket's own API (agent or admin), behind its policy.
trait Api: Served + NamedService + Clone + Send + 'static {}

impl<S: Served + NamedService + Clone + Send + 'static> Api for S {}

/// What serves a request (an API, the router).
trait Served: tonic::codegen::Service<Incoming, Response = Answer, Error = Infallible, Future: Send> {}

impl<S: tonic::codegen::Service<Incoming, Response = Answer, Error = Infallible, Future: Send>> Served for S {}

/// One socket's accept loop and what its connections are served with.
struct Listener<A> {
    listener: UnixListener,
    socket: Socket,
    api: A,
    /// Health and reflection.
    routes: Routes,
    owner: u32,
    /// Agent connections held, per uid and in all.
    caps: Option<Arc<Slots>>,
    /// Changes on revoke-all: every connection closes at once.
    cutoff: Option<watch::Receiver<u64>>,
    /// (handshake, idle).
    timeouts: (Duration, Duration),
}

/// A warning that may repeat fast, logged at most once per [`WARN_EVERY`] with
/// how many went unlogged since.
#[derive(Default)]
struct Throttled {
    last: Option<Instant>,
    unlogged: u64,
}

impl Throttled {
    /// `Some(unlogged since the last)` when this one is to be logged.
    fn due(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|last| now.duration_since(last) < WARN_EVERY) {
            self.unlogged += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

impl<A: Api> Listener<A> {
    /// Accepts until `stop` changes, then drains: each connection is asked to
    /// close and given [`DRAIN`] to do so, then dropped.
    async fn run(self, mut stop: watch::Receiver<()>) {
        let http2 = http2_builder();
        let mut connections = JoinSet::new();
        let (mut refused, mut failed) = (Throttled::default(), Throttled::default());
        let mut backoff = Duration::ZERO;
        let mut next_id = 0;
        loop {
            let accepted = tokio::select! {
                _ = stop.changed() => break,
                Some(_) = connections.join_next() => continue,
                accepted = self.listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE, ENFILE, ENOMEM, ECONNABORTED: pending connections stay
                    // queued, and retrying at once would only spin.
                    backoff = (backoff * 2).clamp(ACCEPT_BACKOFF.0, ACCEPT_BACKOFF.1);
                    if let Some(unlogged) = failed.due() {
                        tracing::warn!(socket = %self.socket, error = %e, unlogged, "accepting a connection failed; backing off");
                    }
                    tokio::select! {
                        _ = stop.changed() => break,
                        () = tokio::time::sleep(backoff) => continue,
                    }
                }
            };
            backoff = Duration::ZERO;
            let Some(slot) = self.admit(&stream, &mut refused) else { continue };
            next_id += 1;
            let conn = Connection {
                attestation: Attestation(Peer::of_stream(&stream)),
                id: ConnectionId(next_id),
                api: self.api.clone(),
                routes: self.routes.clone(),
                timeouts: self.timeouts,
                _slot: slot,
            };
            // Cut by the next revoke-all, not by one before it was accepted.
            let cutoff = self.cutoff.clone().map(|mut cutoff| {
                cutoff.mark_unchanged();
                cutoff
            });
            connections.spawn(conn.serve(stream, http2.clone(), stop.clone(), cutoff));
        }
        let drained = tokio::time::timeout(DRAIN, async { while connections.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(socket = %self.socket, "connections still open {DRAIN:?} after shutdown began; closing them");
        }
    }

    /// The slot an agent connection takes (`Some(None)` on the admin socket), or
    /// `None` when its uid, or everyone, holds all there are: it is closed at once.
    fn admit(&self, stream: &UnixStream, refused: &mut Throttled) -> Option<Option<Slot>> {
        let Some(caps) = &self.caps else { return Some(None) };
        // No credentials: one unknown caller, capped like a uid.
        let uid = stream.peer_cred().map_or(u32::MAX, |c| c.uid());
        match caps.take((uid != self.owner).then_some(uid)) {
            Ok(slot) => Some(Some(slot)),
            Err(full) => {
                if let Some(unlogged) = refused.due() {
                    tracing::warn!(uid, ?full, unlogged, "agent connection refused: over its cap");
                }
                None
            }
        }
    }
}

fn http2_builder() -> hyper::server::conn::http2::Builder<hyper_util::rt::TokioExecutor> {
    let mut builder = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .max_header_list_size(MAX_HEADER_LIST);
    builder
}

/// One accepted connection and what it is served with.
struct Connection<A> {
    attestation: Attestation,
    id: ConnectionId,
    api: A,
    routes: Routes,
    /// (handshake, idle).
    timeouts: (Duration, Duration),
    /// Given back when the connection ends.
    _slot: Option<Slot>,
}

impl<A: Api> Connection<A> {
    /// Serves the connection until the peer closes it, or vaultd does: at once on
    /// revoke-all (every stream with it) or when the peer has not introduced
    /// itself in time; gracefully (open streams finish) after an idle spell or
    /// at shutdown. Dropping the connection closes its socket: no descriptor of
    /// it is kept anywhere else.
    async fn serve(
        self,
        stream: UnixStream,
        http2: hyper::server::conn::http2::Builder<hyper_util::rt::TokioExecutor>,
        mut stop: watch::Receiver<()>,
        mut cutoff: Option<watch::Receiver<u64>>,
    ) {
        let (handshake, idle) = self.timeouts;
        let streams = Arc::new(Streams::new());
        let read = Arc::new(AtomicUsize::new(0));
        let io = Introduced { stream, read: read.clone() };
        let service = ConnService {
            api: self.api,
            routes: self.routes,
            attestation: self.attestation,
            id: self.id,
            streams: streams.clone(),
        };
        let conn = http2.serve_connection(hyper_util::rt::TokioIo::new(io), service);
        tokio::pin!(conn);
        let introduction = tokio::time::sleep(handshake);
        tokio::pin!(introduction);
        // Once asked to close, a peer has as long as a handshake to let go (it
        // may never answer the closing ping); then the connection is dropped.
        let goodbye = tokio::time::sleep(handshake);
        tokio::pin!(goodbye);
        let (mut introduced, mut closing) = (false, false);
        loop {
            let close = tokio::select! {
                served = conn.as_mut() => {
                    if let Err(e) = served {
                        tracing::debug!(error = %e, "connection ended");
                    }
                    return;
                }
                Some(Ok(())) = async { Some(cutoff.as_mut()?.changed().await) } => return,
                () = &mut introduction, if !introduced => {
                    introduced = read.load(Ordering::Relaxed) >= PREFACE_LEN;
                    if !introduced {
                        tracing::debug!("connection closed: no HTTP/2 preface within {handshake:?}");
                        return;
                    }
                    false
                }
                () = streams.idle_for(idle), if !closing => true,
                Ok(()) = stop.changed(), if !closing => true,
                () = &mut goodbye, if closing => return,
            };
            if close {
                closing = true;
                conn.as_mut().graceful_shutdown();
                goodbye.as_mut().reset(tokio::time::Instant::now() + handshake);
            }
        }
    }
}

/// A connection's stream, counting the bytes the peer sent until it has sent
/// its HTTP/2 preface.
struct Introduced {
    stream: UnixStream,
    read: Arc<AtomicUsize>,
}

impl AsyncRead for Introduced {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 && self.read.load(Ordering::Relaxed) < PREFACE_LEN {
            self.read.fetch_add(n, Ordering::Relaxed);
        }
        polled
    }
}

impl AsyncWrite for Introduced {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The streams open on a connection: a request is open from the moment it
/// arrives until its response body is done with (a watch, as long as it runs).
/// Kept in atomics alone: opening and closing a stream (every request) wakes no
/// task; the idle check reads them when its timer fires. (A `Notify` here woke
/// the connection's task twice per request, and with it another worker: about
/// one futex call and two context switches per read.)
struct Streams {
    open: AtomicUsize,
    /// When the last stream closed (or the connection started), as nanoseconds
    /// since `start`.
    closed_at: AtomicU64,
    start: tokio::time::Instant,
}

/// One open stream; closed when dropped.
struct Open(Arc<Streams>);

impl Streams {
    fn new() -> Streams {
        Streams { open: AtomicUsize::new(0), closed_at: AtomicU64::new(0), start: tokio::time::Instant::now() }
    }

    fn open(self: &Arc<Self>) -> Open {
        self.open.fetch_add(1, Ordering::SeqCst);
        Open(self.clone())
    }

    /// Resolves once no stream has been open for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            // `open` first: a close stores its time before it counts down, so
            // once none is open, the time read is the last close's.
            let busy = self.open.load(Ordering::SeqCst) > 0;
            let quiet_since = self.start + Duration::from_nanos(self.closed_at.load(Ordering::SeqCst));
            let now = tokio::time::Instant::now();
            if !busy && now >= quiet_since + idle {
                return;
            }
            tokio::time::sleep_until(if busy { now + idle } else { quiet_since + idle }).await;
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        let streams = &self.0;
        let since_start = u64::try_from(streams.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        streams.closed_at.fetch_max(since_start, Ordering::SeqCst);
        streams.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its stream counted as open until it is dropped.
struct Counted<B> {
    body: B,
    _open: Open,
}

impl<B: http_body::Body + Unpin> http_body::Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let mut polled = Pin::new(&mut self.body).poll_frame(cx);
        // A stream that fails midway has its status in the trailers.
        if let Poll::Ready(Some(Ok(frame))) = &mut polled
            && let Some(trailers) = frame.trailers_mut()
        {
            trailers.remove(&FAULT);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A connection's requests: each gets the connection's attestation and id,
/// counts as an open stream, and is cancelled after [`REQUEST_TIMEOUT`].
///
/// A call to the socket's API goes to it directly; the router serves the rest
/// (health, reflection, unknown services). Through the router, every request
/// was matched and given path parameters, and each body frame went through two
/// more boxed layers each way: a few thousand instructions per read.
#[derive(Clone)]
struct ConnService<A> {
    api: A,
    routes: Routes,
    attestation: Attestation,
    id: ConnectionId,
    streams: Arc<Streams>,
}

type Reply = http::Response<Counted<tonic::body::Body>>;

impl<A: Api> hyper::service::Service<Incoming> for ConnService<A> {
    type Response = Reply;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Reply, Self::Error>> + Send>>;

    fn call(&self, mut req: Incoming) -> Self::Future {
        let open = self.streams.open();
        let headers: usize = req.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 32).sum();
        if headers > MAX_REQUEST_HEADERS {
            let status = Status::resource_exhausted(format!(
                "the request's headers are {headers} bytes; at most {MAX_REQUEST_HEADERS} are read"
            ));
            let reply = status.into_http::<tonic::body::Body>().map(|body| Counted { body, _open: open });
            return Box::pin(std::future::ready(Ok(reply)));
        }
        req.extensions_mut().insert(self.attestation.clone());
        req.extensions_mut().insert(self.id);
        let served = if is_method_of(req.uri().path(), A::NAME) {
            futures_util::future::Either::Left(call(self.api.clone(), req))
        } else {
            futures_util::future::Either::Right(call(self.routes.clone(), req))
        };
        Box::pin(async move {
            let response = match tokio::time::timeout(REQUEST_TIMEOUT, served).await {
                Ok(Ok(response)) => response,
                Ok(Err(never)) => match never {},
                Err(_) => Status::deadline_exceeded("the request took too long").into_http(),
            };
            Ok(blame_the_sender(response).map(|body| Counted { body, _open: open }))
        })
    }
}

/// Whether `path` names a method of the service `name` (`/NAME/Method`).
fn is_method_of(path: &str, name: &str) -> bool {
    path.strip_prefix('/').and_then(|p| p.strip_prefix(name)).is_some_and(|method| method.starts_with('/'))
}

/// Serves `req` with `service` once it is ready.
async fn call(mut service: impl Served, req: Incoming) -> Result<Answer, Infallible> {
    std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
    service.call(req).await
}

/// An INTERNAL status vaultd did not make (its own carry [`FAULT_HEADER`]) is
/// tonic's: a request that did not decode (malformed protobuf, a string that is
/// not UTF-8, a cut-off or compressed frame, no message at all). That is the
/// sender's bad input: INVALID_ARGUMENT.
fn blame_the_sender<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    let ours = headers.remove(&FAULT).is_some();
    let internal = || HeaderValue::from(Code::Internal as i32);
    if !ours && headers.get(&GRPC_STATUS).is_some_and(|status| *status == internal()) {
        headers.insert(GRPC_STATUS.clone(), HeaderValue::from(Code::InvalidArgument as i32));
    }
    response
}
