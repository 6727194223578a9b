//! Watch fan-out: how long after a rotation is acknowledged the last of N
//! watchers has the new value.
//!
//! The watchers live in a client process of their own (the bench re-executes
//! itself with the hidden `fanout-client` subcommand, [`client`]): `--watchers`
//! `WatchSecrets` streams of one secret, spread evenly over `--connections`
//! unix-socket connections to vaultd's agent socket, each stream read by its own
//! task on a single-threaded runtime. The same process rotates the secret over
//! the admin socket (`RotateSecret`; the secret's rotator is `generate`, so no
//! value travels), so every instant is read from one clock:
//!
//! - *sent*: just before the `RotateSecret` call;
//! - *ack*: when its reply has been received (the new version is durable and
//!   current);
//! - *last*: when the last watcher's task has the message carrying that version
//!   (decoded, after vaultd committed the audit record of that delivery).
//!
//! The figure is `last − ack` (it can be negative: the pushes may overtake the
//! reply); `last − sent` is reported too. Each rotation is one round; a first
//! rotation warms up and is not counted. Every watcher must get every version,
//! and all of them the same value (compared in memory, never printed).

use anyhow::{Context as _, bail, ensure};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use vault_proto::v1;

/// How long one rotation may take to reach every watcher before the run fails.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between rotations, so each round starts from a quiet vaultd.
const BETWEEN_ROUNDS: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct FanoutArgs {
    /// vaultd's agent socket (the watchers).
    #[arg(long)]
    pub(crate) agent_socket: PathBuf,
    /// vaultd's admin socket (the rotations).
    #[arg(long)]
    pub(crate) admin_socket: PathBuf,
    /// The secret watched and rotated; its rotator must be `generate`.
    #[arg(long)]
    pub(crate) name: String,
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=4000))]
    pub(crate) watchers: u16,
    /// Connections the watchers are spread over (at most 64 streams each, vaultd's limit).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub(crate) connections: u16,
    /// Measured rotations (after one warm-up rotation).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub(crate) rotations: u16,
}

impl FanoutArgs {
    fn to_args(&self) -> Vec<String> {
        vec![
            "fanout-client".into(),
            "--agent-socket".into(),
            self.agent_socket.display().to_string(),
            "--admin-socket".into(),
            self.admin_socket.display().to_string(),
            "--name".into(),
            self.name.clone(),
            "--watchers".into(),
            self.watchers.to_string(),
            "--connections".into(),
            self.connections.to_string(),
            "--rotations".into(),
            self.rotations.to_string(),
        ]
    }
}

/// One measured rotation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct FanoutRound {
    pub(crate) version: u64,
    /// `RotateSecret` sent → reply received.
    pub(crate) rotate_ms: f64,
    /// Reply received → the first watcher has the new version (may be negative).
    pub(crate) ack_to_first_ms: f64,
    /// Reply received → the last watcher has the new version (may be negative).
    pub(crate) ack_to_last_ms: f64,
    /// `RotateSecret` sent → the last watcher has the new version.
    pub(crate) sent_to_last_ms: f64,
}

/// What the fan-out client measured (printed as one JSON line).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct FanoutResult {
    pub(crate) client_pid: u32,
    pub(crate) watchers: u16,
    pub(crate) connections: u16,
    pub(crate) rounds: Vec<FanoutRound>,
    /// The client's CPU time (user + system) over the whole run.
    pub(crate) client_cpu_s: f64,
}

/// The bench's side: runs the fan-out client as a separate process.
pub(crate) async fn run(args: &FanoutArgs) -> anyhow::Result<FanoutResult> {
    let limit = DELIVERY_TIMEOUT * (u32::from(args.rotations) + 3) + Duration::from_secs(60);
    crate::child::run(args.to_args(), limit, "fan-out").await
}

/// The hidden `fanout-client` subcommand.
pub(crate) fn client(args: &FanoutArgs) -> anyhow::Result<()> {
    crate::child::serve(crate::child::current_thread()?, measure(args))
}

/// What a watcher task reports: (watcher, version, value, when it had it).
type Delivery = (usize, u64, Vec<u8>, Instant);

async fn measure(args: &FanoutArgs) -> anyhow::Result<FanoutResult> {
    let cpu_before = crate::noise::cpu_seconds(std::process::id())?;
    let watchers = usize::from(args.watchers);
    let mut channels = Vec::new();
    for _ in 0..args.connections {
        channels.push(
            vault_proto::connect(&args.agent_socket)
                .await
                .with_context(|| format!("connecting to {}", args.agent_socket.display()))?,
        );
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<anyhow::Result<Delivery>>();
    let mut first_version = None;
    let mut tasks = Vec::new();
    for w in 0..watchers {
        let mut agent = vault_proto::agent_client(channels[w % channels.len()].clone());
        let request = v1::GetSecretsRequest { env: String::new(), names: vec![args.name.clone()] };
        let mut stream = agent.watch_secrets(request).await.context("opening a watch")?.into_inner();
        let first = stream.message().await?.context("a watch ended before its first message")?;
        let version = first.secrets.first().context("an empty first watch message")?.version;
        ensure!(*first_version.get_or_insert(version) == version, "watchers started at different versions");
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let item = match stream.message().await {
                    Ok(Some(msg)) => {
                        let at = Instant::now();
                        match msg.secrets.into_iter().next() {
                            Some(s) => Ok((w, s.version, s.value, at)),
                            None => Err(anyhow::anyhow!("an empty watch message")),
                        }
                    }
                    Ok(None) => Err(anyhow::anyhow!("a watch ended")),
                    Err(status) => Err(anyhow::anyhow!("a watch failed: {:?}: {}", status.code(), status.message())),
                };
                let failed = item.is_err();
                if tx.send(item).is_err() || failed {
                    return;
                }
            }
        }));
    }
    drop(tx);
    let mut admin = vault_proto::admin_client(vault_proto::connect(&args.admin_socket).await?);
    let mut rounds = Vec::new();
    for round in 0..=args.rotations {
        tokio::time::sleep(BETWEEN_ROUNDS).await;
        let sent = Instant::now();
        let request = v1::RotateSecretRequest {
            secret: Some(v1::SecretRef { env: String::new(), name: args.name.clone() }),
            value: Vec::new(),
        };
        let reply = admin.rotate_secret(request).await.context("RotateSecret")?.into_inner();
        let ack = Instant::now();
        let version = reply.version;
        // Every watcher's delivery of `version`: when, and the value (all must agree).
        let mut had = vec![None::<Instant>; watchers];
        let mut value: Option<Vec<u8>> = None;
        let deadline = tokio::time::Instant::now() + DELIVERY_TIMEOUT;
        while had.iter().any(Option::is_none) {
            let got = tokio::time::timeout_at(deadline, rx.recv()).await;
            let Ok(Some(item)) = got else {
                let missing = had.iter().filter(|h| h.is_none()).count();
                bail!("version {version}: {missing} of {watchers} watchers did not get it within {DELIVERY_TIMEOUT:?}");
            };
            let (w, v, bytes, at) = item?;
            // Every watcher had the previous version before this rotation began.
            ensure!(v == version, "watcher {w} got version {v} while version {version} was expected");
            ensure!(
                value.get_or_insert_with(|| bytes.clone()) == &bytes,
                "watchers got different values of version {v}"
            );
            ensure!(had[w].replace(at).is_none(), "watcher {w} got version {v} twice");
        }
        let first = had.iter().flatten().min().copied().unwrap_or(ack);
        let last = had.iter().flatten().max().copied().unwrap_or(ack);
        let ms_since = |from: Instant, to: Instant| {
            if to >= from { (to - from).as_secs_f64() * 1e3 } else { -(from - to).as_secs_f64() * 1e3 }
        };
        if round > 0 {
            rounds.push(FanoutRound {
                version,
                rotate_ms: ms_since(sent, ack),
                ack_to_first_ms: ms_since(ack, first),
                ack_to_last_ms: ms_since(ack, last),
                sent_to_last_ms: ms_since(sent, last),
            });
        }
    }
    for t in tasks {
        t.abort();
    }
    Ok(FanoutResult {
        client_pid: std::process::id(),
        watchers: args.watchers,
        connections: args.connections,
        rounds,
        client_cpu_s: crate::noise::cpu_seconds(std::process::id())? - cpu_before,
    })
}
