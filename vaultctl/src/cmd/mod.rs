//! The subcommands, one file each. Each validates its input and reads any secret
//! *before* dialing vaultd, so a typo costs no round trip and a bad name never
//! reaches the daemon's logs.

mod audit;
mod backup;
mod budget;
mod client;
mod completions;
mod exec;
mod export;
mod get;
mod import;
mod incident;
mod init;
mod integrity;
mod list;
mod provider_check;
mod put;
mod rekey;
mod restore;
mod rm;
mod rotate;
mod rotate_key;
mod run;
mod seal;
mod show;
mod status;
mod token;
mod unlock;
mod versions;
mod watch;

use clap::Subcommand;
use vault_proto::names;
use vault_proto::v1::SecretRef;

use crate::Global;
use crate::exit::usage;

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create a new vault protected by a passphrase.
    Init(init::Args),
    /// Unseal the vault with its passphrase.
    Unlock(unlock::Args),
    /// Seal the vault: drop every key from vaultd's memory.
    Seal,
    /// Show whether the vault is initialized and sealed, and its parameters.
    Status,
    /// Store a new version of a secret (the value comes from a file, stdin, or a prompt).
    Put(put::Args),
    /// Print a secret's current value, read through the agent socket.
    Get(get::Args),
    /// Show a secret's metadata, and with --reveal its value.
    Show(show::Args),
    /// List the secrets of the environment.
    List,
    /// List the versions of a secret.
    Versions(versions::Args),
    /// Delete a secret and destroy all its versions.
    Rm(rm::Args),
    /// Rotate a secret now with its rotator (or, with --due, every one due).
    Rotate(rotate::RotateArgs),
    /// Set or list rotation policies (rotator, schedule, grace period).
    #[command(subcommand)]
    Rotation(rotate::RotationCommand),
    /// Incident response: revoke every token, disable every client, mark every
    /// secret compromised, close every agent stream; print the incident report.
    RevokeAll(incident::RevokeAllArgs),
    /// List incidents, or show one with the audit timeline before it.
    #[command(subcommand)]
    Incident(incident::IncidentCommand),
    /// Run a program with its secrets in its environment (or files), restarting or
    /// signalling it when they rotate.
    Exec(exec::Args),
    /// Run a program with every secret it may read in the environment (or those a
    /// spec file lists), each as the environment variable of its name.
    Run(run::Args),
    /// Store each NAME=VALUE of a .env file as a secret (unchanged values make no new version).
    Import(import::Args),
    /// Write every secret of the environment, with its value, to a new 0600 file (owner only).
    Export(export::Args),
    /// Follow secrets through the agent socket: their values now, then each new one (JSON lines).
    Watch(watch::Args),
    /// Query, export, follow and verify the tamper-evident audit log.
    #[command(subcommand)]
    Audit(audit::Command),
    /// What vaultd found changed behind its back; `integrity ack` once reviewed.
    #[command(subcommand)]
    Integrity(integrity::Command),
    /// Manage clients (agent identities) and their grants.
    #[command(subcommand)]
    Client(client::Command),
    /// Create, list and revoke bearer tokens for clients.
    #[command(subcommand)]
    Token(token::Command),
    /// Each client's use of each broker route today, against its budget.
    Budget,
    /// Check a spec file (vaultd.toml): which of its secrets are missing or not
    /// granted; or, with ROUTE… or --all, broker routes' credentials live at
    /// their providers (vaultd makes the call; the value never leaves it).
    Check(provider_check::Args),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(completions::Args),
    /// Print the man page (roff), or write all of them with --out-dir: for packaging.
    #[command(hide = true)]
    Man(completions::ManArgs),
    /// Secret or client names for shell completion, one a line.
    #[command(name = "__complete", hide = true)]
    Complete(completions::NamesArgs),
    /// Change the passphrase and/or the Argon2 parameters (re-wraps the root key only).
    Rekey(rekey::Args),
    /// Start a new key term for new writes; --rewrap re-encrypts everything under it.
    RotateKey(rotate_key::Args),
    /// Write an online, consistent backup to FILE; `backup verify FILE` checks one.
    Backup(backup::Args),
    /// Restore a backup into a new, empty data directory (offline).
    Restore(restore::Args),
}

pub(crate) async fn run(global: &Global, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Init(args) => init::run(global, args).await,
        Command::Unlock(args) => unlock::run(global, args).await,
        Command::Seal => seal::run(global).await,
        Command::Status => status::run(global).await,
        Command::Put(args) => put::run(global, args).await,
        Command::Get(args) => get::run(global, args).await,
        Command::Show(args) => show::run(global, args).await,
        Command::List => list::run(global).await,
        Command::Versions(args) => versions::run(global, args).await,
        Command::Rm(args) => rm::run(global, args).await,
        Command::Rotate(args) => rotate::run(global, args).await,
        Command::Rotation(command) => rotate::rotation(global, command).await,
        Command::Watch(args) => watch::run(global, args).await,
        Command::Exec(args) => exec::run(global, args).await,
        Command::Run(args) => run::run(global, args).await,
        Command::Import(args) => import::run(global, args).await,
        Command::Export(args) => export::run(global, args).await,
        Command::RevokeAll(args) => incident::revoke_all(global, args).await,
        Command::Incident(command) => incident::incident(global, command).await,
        Command::Audit(command) => audit::run(global, command).await,
        Command::Integrity(command) => integrity::run(global, command).await,
        Command::Client(command) => client::run(global, command).await,
        Command::Token(command) => token::run(global, command).await,
        Command::Budget => budget::run(global).await,
        Command::Check(args) => provider_check::run(global, args).await,
        Command::Completions(args) => completions::run(args),
        Command::Man(args) => completions::man(args),
        Command::Complete(args) => completions::names(global, args).await,
        Command::Rekey(args) => rekey::run(global, args).await,
        Command::RotateKey(args) => rotate_key::run(global, args).await,
        Command::Backup(args) => backup::run(global, args).await,
        Command::Restore(args) => restore::run(global, args),
    }
}

/// The environment to work in, checked against the naming rule. Empty (say,
/// `VAULT_ENV=`) means the default, as it does on the wire.
fn checked_env(global: &Global) -> anyhow::Result<&str> {
    let env = names::env_or_default(&global.env);
    names::validate(env).map_err(|e| usage(format!("invalid environment: {e}")))?;
    Ok(env)
}

/// The secret a command is about, both parts checked. The error names the rule,
/// never the input, which may be a secret pasted in the wrong place.
fn secret_ref(global: &Global, name: &str) -> anyhow::Result<SecretRef> {
    let env = checked_env(global)?;
    names::validate(name).map_err(|e| usage(format!("invalid secret name: {e}")))?;
    Ok(SecretRef { env: env.to_owned(), name: name.to_owned() })
}
