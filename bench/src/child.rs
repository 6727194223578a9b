//! The bench measures from client processes of its own: it re-executes itself
//! with a hidden subcommand, which prints one JSON result on stdout.

use anyhow::{Context as _, ensure};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::process::Stdio;
use std::time::Duration;

/// The bench's side: runs `vault-bench ARGS` (a `what` client), waits at most
/// `limit`, and parses its JSON result.
pub(crate) async fn run<T: DeserializeOwned>(args: Vec<String>, limit: Duration, what: &str) -> anyhow::Result<T> {
    let child = tokio::process::Command::new(std::env::current_exe()?)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting the {what} client"))?;
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
