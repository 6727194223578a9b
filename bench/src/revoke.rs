//! Revoke-all at scale: with `--tokens` live tokens (over clients of 100 each),
//! `--secrets` secrets and `--streams` open watch streams, how long from sending
//! `RevokeAll` until the last stream has ended.
//!
//! Like the fan-out, the measuring runs in a client process of its own (the
//! hidden `revoke-client` subcommand), which also builds the scene over the
//! admin socket and reads every instant from one clock:
//!
//! - *sent*: just before the `RevokeAll` call;
//! - *ack*: when its reply (the incident report) has been received;
//! - *last*: when the last watch stream's task saw its stream end.
//!
//! Every stream must end with PERMISSION_DENIED, and the report's counts must be
//! exactly the scene's.

use anyhow::{Context as _, ensure};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use vault_proto::v1;

/// Streams one connection carries (vaultd allows 64).
const STREAMS_PER_CONNECTION: usize = 50;
/// Tokens per client (vaultd allows 100 live ones).
const TOKENS_PER_CLIENT: usize = 100;
/// Setup calls in flight.
const SETUP_IN_FLIGHT: usize = 16;

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct RevokeArgs {
    #[arg(long)]
    pub(crate) agent_socket: PathBuf,
    #[arg(long)]
    pub(crate) admin_socket: PathBuf,
    #[arg(long, default_value_t = 10_000)]
    pub(crate) tokens: usize,
    #[arg(long, default_value_t = 1_000)]
    pub(crate) secrets: usize,
    #[arg(long, default_value_t = 200)]
    pub(crate) streams: usize,
}

impl RevokeArgs {
    fn to_args(&self) -> Vec<String> {
        let s = |v: &dyn ToString| v.to_string();
        vec![
            "revoke-client".into(),
            "--agent-socket".into(),
            self.agent_socket.display().to_string(),
            "--admin-socket".into(),
            self.admin_socket.display().to_string(),
            "--tokens".into(),
            s(&self.tokens),
            "--secrets".into(),
            s(&self.secrets),
            "--streams".into(),
            s(&self.streams),
        ]
    }
}

/// One revoke-all.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RevokeResult {
    pub(crate) tokens: usize,
    pub(crate) secrets: usize,
    pub(crate) streams: usize,
    /// Building the scene (clients, tokens, secrets, streams).
    pub(crate) setup_s: f64,
    /// RevokeAll sent → its reply.
    pub(crate) revoke_ms: f64,
    /// RevokeAll sent → the last stream ended.
    pub(crate) sent_to_last_closed_ms: f64,
    /// The report's counts: tokens revoked, clients disabled, secrets compromised, streams closed.
    pub(crate) report: [u64; 4],
    pub(crate) client_pid: u32,
}

/// Runs one revoke-all in a separate client process and returns its figures.
pub(crate) async fn run(args: &RevokeArgs) -> anyhow::Result<RevokeResult> {
    crate::child::run(args.to_args(), Duration::from_secs(600), "revoke-all").await
}

/// The hidden `revoke-client` subcommand.
pub(crate) fn client(args: &RevokeArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    crate::child::serve(runtime, measure(args))
}

async fn measure(args: &RevokeArgs) -> anyhow::Result<RevokeResult> {
    use futures_util::StreamExt as _;
    let started = Instant::now();
    let admin = vault_proto::admin_client(vault_proto::connect(&args.admin_socket).await?);
    let clients = args.tokens.div_ceil(TOKENS_PER_CLIENT).max(1);
    for c in 0..clients {
        let add = v1::AddClientRequest {
            name: format!("agent{c}"),
            uid: 20_000 + c as u32,
            allow: vec!["default/*".into()],
            ..Default::default()
        };
        admin.clone().add_client(add).await.context("adding a client")?;
    }
    let calls = (0..args.secrets)
        .map(|i| {
            let mut admin = admin.clone();
            async move {
                let secret = Some(v1::SecretRef { env: String::new(), name: format!("s{i}") });
                let put = v1::PutSecretRequest { secret, value: crate::secret_value(), ..Default::default() };
                admin.put_secret(put).await.map(drop)
            }
        })
        .collect::<Vec<_>>();
    for result in futures_util::stream::iter(calls).buffer_unordered(SETUP_IN_FLIGHT).collect::<Vec<_>>().await {
        result.context("storing a secret")?;
    }
    let calls = (0..args.tokens)
        .map(|t| {
            let mut admin = admin.clone();
            async move {
                let create = v1::CreateTokenRequest {
                    client: format!("agent{}", t / TOKENS_PER_CLIENT),
                    any_uid: true,
                    ..Default::default()
                };
                admin.create_token(create).await.map(drop)
            }
        })
        .collect::<Vec<_>>();
    for result in futures_util::stream::iter(calls).buffer_unordered(SETUP_IN_FLIGHT).collect::<Vec<_>>().await {
        result.context("creating a token")?;
    }
    // The streams, as the vault's owner, each of one secret, over enough connections.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tonic::Code, Instant)>();
    let mut agent = None;
    for i in 0..args.streams {
        if i % STREAMS_PER_CONNECTION == 0 {
            agent = Some(vault_proto::agent_client(vault_proto::connect(&args.agent_socket).await?));
        }
        let mut client = agent.clone().context("a connection")?;
        let request =
            v1::GetSecretsRequest { env: String::new(), names: vec![format!("s{}", i % args.secrets.max(1))] };
        let mut stream = client.watch_secrets(request).await?.into_inner();
        stream.message().await?.context("the watch sent nothing")?;
        let tx = tx.clone();
        tokio::spawn(async move {
            let code = loop {
                match stream.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => break tonic::Code::Ok,
                    Err(status) => break status.code(),
                }
            };
            let _ = tx.send((code, Instant::now()));
        });
    }
    drop(tx);
    let setup_s = started.elapsed().as_secs_f64();

    let sent = Instant::now();
    let reply = admin
        .clone()
        .revoke_all(v1::RevokeAllRequest { reason: "vault-bench".into(), ..Default::default() })
        .await?
        .into_inner();
    let ack = Instant::now();
    // Streams may all end before the reply arrives: vaultd ends them first.
    let mut last = sent;
    let mut ended = 0;
    while let Some((code, at)) = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await? {
        ensure!(code == tonic::Code::PermissionDenied, "a stream ended with {code:?}, not PERMISSION_DENIED");
        last = last.max(at);
        ended += 1;
    }
    ensure!(ended == args.streams, "{ended} of {} streams ended", args.streams);
    let report = [reply.tokens_revoked, reply.clients_disabled, reply.secrets_compromised, reply.streams_closed];
    let want = [args.tokens as u64, clients as u64, args.secrets as u64, args.streams as u64];
    ensure!(report == want, "the report counts {report:?}, the scene was {want:?}");
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Ok(RevokeResult {
        tokens: args.tokens,
        secrets: args.secrets,
        streams: args.streams,
        setup_s,
        revoke_ms: ms(ack - sent),
        sent_to_last_closed_ms: ms(last - sent),
        report,
        client_pid: std::process::id(),
    })
}
