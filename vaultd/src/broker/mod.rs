//! The credential broker: an HTTP listener (a unix socket, optionally a
//! loopback TCP port) that forwards an agent's request to a configured
//! upstream with the secret attached on the way out. The agent holds a
//! stand-in (a vaultd token, or nothing: the kernel names it on the socket),
//! never the value.
//!
//! A request: route (`/{route}/…`) → caller (kernel or token) →
//! `Vault::authorize_use` (the one access decision, rate-limited, audited) →
//! the exfiltration guard on the request → upstream (pooled, rustls) → the
//! reply streamed back as it comes, redacted, metered, cut when the caller's
//! access ends → one `broker.request` audit record.

pub mod alert;
mod budget;
mod check;
mod config;
mod proxy;
mod route;
mod scan;
mod tcp_peer;
mod upstream;
mod usage;

pub use alert::AlertConfig;
pub use budget::{Row as BudgetRow, Spent};
pub use check::Checked;
pub use config::{BrokerConfig, Budget, Price, Provider, RouteConfig};

use crate::identity::Peer;
use crate::limits::{OWNER_CONNECTIONS, Pauses, Slot, Slots};
use crate::vault::Vault;
use route::Route;
use scan::Needles;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How long a stop waits for requests in flight before closing their connections.
const DRAIN: Duration = Duration::from_secs(5);

pub struct Broker {
    vault: Arc<Vault>,
    routes: HashMap<String, Arc<Route>>,
    config: BrokerConfig,
    owner: u32,
    budgets: Arc<budget::Budgets>,
    /// The stored values the guard looks for, as of a state generation.
    needles: Mutex<(Option<u64>, Arc<Needles>)>,
    /// The bad-token pause (as on the agent socket), keyed on this broker's
    /// connection numbers and the tokens' prefixes.
    pauses: Pauses,
    connections: AtomicU64,
}

/// The broker's bound listeners.
pub struct Listeners {
    unix: UnixListener,
    path: PathBuf,
    tcp: Option<TcpListener>,
}

/// Where a connection came from.
#[derive(Debug, Clone)]
pub(crate) enum Origin {
    /// The unix socket: the kernel's word on the caller, if it gave one.
    Unix(Option<Peer>),
    /// The loopback port: the uid owning the caller's socket, if found.
    Tcp(Option<u32>),
}

impl Broker {
    /// The broker the config asks for; `None` without routes.
    pub fn new(vault: Arc<Vault>, config: &BrokerConfig) -> Result<Option<Arc<Broker>>, String> {
        if config.routes.is_empty() {
            return Ok(None);
        }
        let roots = upstream::system_roots();
        let mut routes = HashMap::new();
        for r in &config.routes {
            let route = Route::new(r.clone(), &roots)?;
            if routes.insert(route.name.clone(), Arc::new(route)).is_some() {
                return Err(format!("[[broker.route]] {:?} is defined twice", r.name));
            }
        }
        let owner = rustix::process::geteuid().as_raw();
        let needles = Mutex::new((None, Arc::default()));
        let budgets = Arc::default();
        let (pauses, connections) = (Pauses::default(), AtomicU64::new(0));
        let broker = Arc::new(Broker {
            vault: vault.clone(),
            routes,
            config: config.clone(),
            owner,
            budgets,
            needles,
            pauses,
            connections,
        });
        // Rotations tested by a route's check (`--check ROUTE`) ask the broker.
        vault.set_provider_check(Box::new(check::RotationChecks(Arc::downgrade(&broker))));
        Ok(Some(broker))
    }

    /// Binds the socket (default: `broker.sock` beside `agent_socket`) and the port.
    pub async fn bind(&self, agent_socket: &Path) -> std::io::Result<Listeners> {
        let path = match &self.config.socket {
            Some(path) => path.clone(),
            None => agent_socket.with_file_name("broker.sock"),
        };
        let unix = crate::server::bind(&path, self.config.socket_mode, None).await?;
        let tcp = match self.config.listen {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        Ok(Listeners { unix, path, tcp })
    }

    /// Serves until `stop` changes, then drains for at most [`DRAIN`].
    pub async fn serve(self: Arc<Self>, listeners: Listeners, mut stop: watch::Receiver<()>) {
        let caps = Slots::new(
            self.config.connections,
            self.config.connections_per_uid,
            OWNER_CONNECTIONS.min(self.config.connections),
        );
        let mut connections = JoinSet::new();
        tracing::info!(socket = %listeners.path.display(), tcp = ?listeners.tcp.as_ref().and_then(|l| l.local_addr().ok()), "broker listening");
        loop {
            let accepted = tokio::select! {
                _ = stop.changed() => break,
                Some(_) = connections.join_next() => continue,
                a = listeners.unix.accept() => a.map(|(s, _)| {
                    let peer = Peer::of_stream(&s);
                    (Conn::Unix(s), Origin::Unix(peer))
                }),
                a = accept_tcp(listeners.tcp.as_ref()) => a.map(|(s, peer, local)| {
                    (Conn::Tcp(s), Origin::Tcp(tcp_peer::uid_of(peer, local)))
                }),
            };
            let (conn, origin) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "broker: accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(slot) = self.admit(&origin, &caps) else { continue };
            connections.spawn(self.clone().connection(conn, origin, slot, stop.clone()));
        }
        let drained = tokio::time::timeout(DRAIN, async { while connections.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!("broker connections still open {DRAIN:?} after shutdown began; closing them");
        }
        let _ = std::fs::remove_file(&listeners.path);
    }

    /// A connection slot for the caller's uid (the owner's are its own), or
    /// `None`: the connection is closed at once.
    fn admit(&self, origin: &Origin, caps: &Arc<Slots>) -> Option<Slot> {
        let uid = match origin {
            Origin::Unix(peer) => peer.as_ref().map(|p| p.uid),
            Origin::Tcp(uid) => *uid,
        }
        .unwrap_or(u32::MAX);
        caps.take((uid != self.owner).then_some(uid))
            .inspect_err(|full| tracing::debug!(uid, ?full, "broker connection refused: over its cap"))
            .ok()
    }

    /// Serves one connection's requests (HTTP/1.1) until it ends, a stop asks
    /// it to close, or a revoke-all cuts it.
    async fn connection(self: Arc<Self>, conn: Conn, origin: Origin, _slot: Slot, mut stop: watch::Receiver<()>) {
        let origin = Arc::new(origin);
        let id = self.connections.fetch_add(1, Ordering::Relaxed);
        let broker = self.clone();
        let service = hyper::service::service_fn(move |req| broker.clone().handle(req, origin.clone(), id));
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(self.config.header_timeout).max_headers(128);
        let mut cutoff = self.vault.cutoffs();
        macro_rules! serve {
            ($io:expr) => {{
                let served = http.serve_connection(hyper_util::rt::TokioIo::new($io), service);
                tokio::pin!(served);
                tokio::select! {
                    r = served.as_mut() => { if let Err(e) = r { tracing::debug!(error = %e, "broker connection ended") } return; }
                    _ = cutoff.changed() => return,
                    _ = stop.changed() => served.as_mut().graceful_shutdown(),
                }
                let _ = tokio::time::timeout(DRAIN, served).await;
            }};
        }
        match conn {
            Conn::Unix(s) => serve!(s),
            Conn::Tcp(s) => serve!(s),
        }
    }

    /// Every client's use of every route today, against its budget.
    pub fn budgets(&self) -> Vec<budget::Row> {
        let mut routes: Vec<&Route> = self.routes.values().map(|r| &**r).collect();
        routes.sort_by(|a, b| a.name.cmp(&b.name));
        self.budgets.rows(routes.into_iter(), crate::clock::now_unix())
    }

    /// The guard's needles for the vault's state now (computed again after a change).
    fn needles(&self) -> Arc<Needles> {
        let generation = *self.vault.changes().borrow();
        let mut cached = self.needles.lock().unwrap_or_else(|p| p.into_inner());
        if cached.0 != Some(generation) {
            let values = self.vault.stored_values().unwrap_or_default();
            *cached = (Some(generation), Arc::new(Needles::new(values, self.config.guard_min_len)));
        }
        cached.1.clone()
    }
}

enum Conn {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

async fn accept_tcp(
    listener: Option<&TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, SocketAddr, SocketAddr)> {
    let Some(listener) = listener else { return std::future::pending().await };
    let (stream, peer) = listener.accept().await?;
    stream.set_nodelay(true)?;
    let local = stream.local_addr()?;
    Ok((stream, peer, local))
}
