//! The bench measures from client processes of its own: it re-executes itself
//! with a hidden subcommand, which prints one JSON result on stdout.

use anyhow::{Context as _, ensure};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::process::Stdio;
use std::time::Duration;

/// How the bench starts a client: by default as itself, with nothing on stdin.
#[derive(Debug, Clone, Default)]
pub(crate) struct Launch {
    /// Run as this uid and gid (the bench must be root), from `exe`, a copy of
    /// the bench that uid can execute.
    pub(crate) as_uid: Option<(u32, std::path::PathBuf)>,
    /// Written to the client's stdin: where a token goes (never on argv).
    pub(crate) stdin: Option<crate::load::Bearer>,
}

/// The bench's side: runs `vault-bench ARGS` (a `what` client), waits at most
/// `limit`, and parses its JSON result.
pub(crate) async fn run<T: DeserializeOwned>(args: Vec<String>, limit: Duration, what: &str) -> anyhow::Result<T> {
    run_with(args, limit, what, &Launch::default()).await
}

/// [`run`], started as `launch` says.
pub(crate) async fn run_with<T: DeserializeOwned>(
    args: Vec<String>,
    limit: Duration,
    what: &str,
    launch: &Launch,
) -> anyhow::Result<T> {
    use tokio::io::AsyncWriteExt as _;
    let exe = match &launch.as_uid {
        Some((_, exe)) => exe.clone(),
        None => std::env::current_exe()?,
    };
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(args)
        .stdin(if launch.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    if let Some((uid, _)) = launch.as_uid {
        // std also clears the supplementary groups when root sets a uid.
        cmd.uid(uid).gid(uid);
    }
    let mut child = cmd.spawn().with_context(|| format!("starting the {what} client"))?;
    if let (Some(bearer), Some(mut pipe)) = (&launch.stdin, child.stdin.take()) {
        pipe.write_all(bearer.expose().as_bytes()).await?;
    }
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .with_context(|| format!("the {what} client ran over {limit:?}"))??;
    ensure!(out.status.success(), "the {what} client failed ({})", out.status);
    serde_json::from_slice(&out.stdout).with_context(|| format!("reading the {what} client's result"))
}

/// The client's side: dies with the bench, runs `measure` on `runtime` and
/// prints its result as one JSON line.
pub(crate) fn serve<T: Serialize, F: Future<Output = anyhow::Result<T>>>(
    runtime: tokio::runtime::Runtime,
    measure: F,
) -> anyhow::Result<()> {
    crate::die_with_parent()?;
    let result = runtime.block_on(measure)?;
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

/// A single-threaded runtime, as most clients use.
pub(crate) fn current_thread() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}
