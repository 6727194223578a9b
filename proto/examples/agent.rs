//! A long-running agent's integration with vaultd: fetch its secrets at startup,
//! then follow their rotations.
//!
//!     VAULT_SOCKET=/run/vaultd/agent.sock VAULT_TOKEN=vt_… \
//!         cargo run -p vault-proto --example agent -- telegram anthropic
//!
//! It prints what it got, never the values: an example gets copied, and a value
//! printed here would end up in someone's logs. It runs until vaultd ends the
//! watch (access revoked: exit 1) or it is interrupted.

use std::collections::HashMap;
use std::process::ExitCode;

use vault_proto::{Client, SecretValue};

#[tokio::main]
async fn main() -> ExitCode {
    let names: Vec<String> = std::env::args().skip(1).collect();
    if names.is_empty() {
        eprintln!("usage: agent NAME...");
        return ExitCode::from(2);
    }
    match run(&names.iter().map(String::as_str).collect::<Vec<_>>()).await {
        Ok(()) => ExitCode::SUCCESS,
        // The error names the secret and vaultd's reason, never a value.
        Err(err) => {
            eprintln!("agent: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(names: &[&str]) -> Result<(), vault_proto::Error> {
    let vault = Client::connect_default().await?;

    // Startup: every secret or a clear error, in one round trip.
    let mut secrets: HashMap<String, SecretValue> = vault.get_many(names).await?;
    for name in names {
        println!("loaded {name}: {} bytes", secrets[*name].len());
    }
    // A real agent builds its API clients here, from `secrets[name].expose_str()`,
    // and looks the value up again after each update below.

    // Rotations: the first update repeats every current value (so one that rotated
    // since get_many is not missed); later ones carry only what changed.
    let mut watch = vault.watch(names).await?;
    let mut first = true;
    while let Some(update) = watch.message().await? {
        for secret in update {
            if !first {
                println!("updated {}: version {}, {} bytes", secret.name, secret.version, secret.value.len());
            }
            // The replaced value is wiped as it drops.
            secrets.insert(secret.name, secret.value);
        }
        if first {
            println!("watching {} secrets", names.len());
            first = false;
        }
    }
    Ok(())
}
