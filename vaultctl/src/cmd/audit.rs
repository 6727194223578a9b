//! `vaultctl audit …`: read, export, follow and verify the tamper-evident audit
//! log, and fingerprint a candidate value the way the log records values.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use serde_json::Value;
use vault_proto::v1::{self, AuditFilter};

use crate::Global;
use crate::daemon::{self, Reply as _};
use crate::exit::usage;
use crate::{input, output};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Show entries, oldest first (the newest --limit of those that match).
    Query(Filter),
    /// Write every entry as JSON lines to a new file (created 0600).
    Export(ExportArgs),
    /// Show the newest security events; with --follow, keep printing new ones.
    Tail(TailArgs),
    /// Check the whole chain; exits 1 at the first edited, inserted, reordered or deleted entry.
    Verify,
    /// Print the keyed digest of a value (from stdin, --from-file or a prompt), as
    /// entries record it in `value_digest`.
    Hash(HashArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct Filter {
    /// Entries at or after this: a duration ago ("1h", "7d") or an RFC 3339 time.
    #[arg(long, value_name = "WHEN")]
    since: Option<String>,
    /// Entries before this: a duration ago or an RFC 3339 time.
    #[arg(long, value_name = "WHEN")]
    until: Option<String>,
    /// A type (`secret.read`), a family (`secret`) or a class (`security`, `access`, `change`, `audit`, `system`).
    #[arg(long = "type", value_name = "T")]
    kind: Option<String>,
    /// Entries by this client.
    #[arg(long, value_name = "NAME")]
    client: Option<String>,
    /// Entries about this secret: `env/name`, or a name in any environment.
    #[arg(long, value_name = "SECRET")]
    secret: Option<String>,
    /// At most this many (the newest). 0: all.
    #[arg(long, default_value_t = 100, value_name = "N")]
    limit: u32,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ExportArgs {
    /// The export format; JSON lines is the only one.
    #[arg(long, value_parser = ["jsonl"], default_value = "jsonl")]
    format: String,
    /// The file to create (refused if it exists).
    #[arg(long, value_name = "FILE")]
    output: PathBuf,
}

#[derive(Debug, clap::Args)]
pub(crate) struct TailArgs {
    /// Keep printing entries as they are committed, until interrupted.
    #[arg(long, short = 'f')]
    follow: bool,
    /// What to show; `all` for everything.
    #[arg(long = "type", value_name = "T", default_value = "security")]
    kind: String,
    /// How many past entries to show first.
    #[arg(short = 'n', long, default_value_t = 20)]
    lines: u32,
}

#[derive(Debug, clap::Args)]
pub(crate) struct HashArgs {
    /// Read the value from this file (`-` for stdin).
    #[arg(long, value_name = "FILE")]
    from_file: Option<PathBuf>,
}

pub(crate) async fn run(global: &Global, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Query(filter) => query(global, filter).await,
        Command::Export(args) => export(global, args).await,
        Command::Tail(args) => tail(global, args).await,
        Command::Verify => verify(global).await,
        Command::Hash(args) => hash(global, args).await,
    }
}

async fn query(global: &Global, filter: Filter) -> anyhow::Result<()> {
    let filter = filter.into_proto()?;
    let mut admin = daemon::admin(global).await?;
    let reply = admin.query_audit(v1::QueryAuditRequest { filter: Some(filter) }).await.reply()?;
    let entries: Vec<Value> = reply.entries.iter().map(parse).collect::<anyhow::Result<_>>()?;
    if global.json {
        return output::json(&entries);
    }
    output::lines(&entries.iter().map(human).collect::<Vec<_>>())
}

async fn export(global: &Global, args: ExportArgs) -> anyhow::Result<()> {
    // The file first: an export refused for its file must not stream (and record) the log.
    let file = output::create_private(&args.output)?;
    let mut out = std::io::BufWriter::new(file);
    let mut count = 0u64;
    let written = async {
        let mut admin = daemon::admin(global).await?;
        let mut stream = admin.export_audit(v1::ExportAuditRequest {}).await.reply()?;
        while let Some(entry) = stream.message().await.map_err(daemon::RpcError::from)? {
            writeln!(out, "{}", entry.json)?;
            count += 1;
        }
        out.flush()?;
        out.get_ref().sync_all()?;
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = written {
        // A partial export is worse than none: it looks complete.
        let _ = std::fs::remove_file(&args.output);
        return Err(e.context(format!("export to {} failed; the file was removed", args.output.display())));
    }
    if global.json {
        return output::json(&serde_json::json!({ "entries": count, "output": args.output }));
    }
    output::lines(&[format!("exported {count} entries to {}", args.output.display())])
}

async fn tail(global: &Global, args: TailArgs) -> anyhow::Result<()> {
    let kind = (args.kind != "all").then_some(args.kind);
    let filter = AuditFilter { r#type: kind.unwrap_or_default(), limit: args.lines, ..Default::default() };
    let mut admin = daemon::admin(global).await?;
    if !args.follow {
        let reply = admin.query_audit(v1::QueryAuditRequest { filter: Some(filter) }).await.reply()?;
        for entry in &reply.entries {
            print_entry(global, entry)?;
        }
        return Ok(());
    }
    let mut stream = admin.tail_audit(v1::TailAuditRequest { filter: Some(filter) }).await.reply()?;
    while let Some(entry) = stream.message().await.map_err(daemon::RpcError::from)? {
        print_entry(global, &entry)?;
    }
    Ok(())
}

async fn verify(global: &Global) -> anyhow::Result<()> {
    let mut admin = daemon::admin(global).await?;
    let r = admin.verify_audit(v1::VerifyAuditRequest {}).await.reply()?;
    if global.json {
        output::json(&serde_json::json!({
            "intact": r.intact,
            "entries": r.entries,
            "first_seq": r.first_seq,
            "last_seq": r.last_seq,
            "broken_seq": r.broken_seq,
            "problem": r.problem,
            "acknowledged": r.acknowledged,
        }))?;
    } else if r.intact {
        let acknowledged = match r.acknowledged {
            0 => String::new(),
            n => format!("; {n} problems found earlier were acknowledged (`vaultctl integrity ack`)"),
        };
        output::lines(&[format!(
            "audit log intact: {} entries (seq {}..={}){acknowledged}",
            r.entries, r.first_seq, r.last_seq
        )])?;
    }
    if !r.intact {
        bail!("audit log broken at entry {}: {}", r.broken_seq, r.problem);
    }
    Ok(())
}

async fn hash(global: &Global, args: HashArgs) -> anyhow::Result<()> {
    let value = input::value(args.from_file.as_deref(), "Value to fingerprint: ")?;
    let mut admin = daemon::admin(global).await?;
    let reply =
        admin.hash_value(v1::HashValueRequest { value: value.into_request_bytes(), current_of: None }).await.reply()?;
    if global.json {
        return output::json(&serde_json::json!({ "value_digest": reply.digest }));
    }
    output::lines(&[reply.digest])
}

impl Filter {
    fn into_proto(self) -> anyhow::Result<AuditFilter> {
        Ok(AuditFilter {
            since_unix_ms: self.since.as_deref().map(when).transpose()?.unwrap_or(0),
            until_unix_ms: self.until.as_deref().map(when).transpose()?.unwrap_or(0),
            r#type: self.kind.unwrap_or_default(),
            client: self.client.unwrap_or_default(),
            secret: self.secret.unwrap_or_default(),
            limit: self.limit,
        })
    }
}

/// `1h` (that long ago) or an RFC 3339 time, as unix milliseconds.
fn when(text: &str) -> anyhow::Result<i64> {
    let at = match humantime::parse_duration(text) {
        Ok(ago) => SystemTime::now().checked_sub(ago).unwrap_or(UNIX_EPOCH),
        Err(_) => humantime::parse_rfc3339_weak(text)
            .map_err(|_| usage("a time must be a duration ago (\"1h\", \"7d\") or an RFC 3339 time"))?,
    };
    Ok(at.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_millis() as i64)
}

pub(super) fn parse(entry: &v1::AuditEntry) -> anyhow::Result<Value> {
    serde_json::from_str(&entry.json).with_context(|| format!("vaultd sent audit entry {} as invalid JSON", entry.seq))
}

fn print_entry(global: &Global, entry: &v1::AuditEntry) -> anyhow::Result<()> {
    if global.json {
        return output::lines(&[&entry.json]);
    }
    output::lines(&[human(&parse(entry)?)])
}

/// One line: time, seq, type, outcome, who, what, details.
pub(super) fn human(e: &Value) -> String {
    let actor = match &e["actor"] {
        Value::Object(a) if a.get("vaultd").is_some() => "vaultd".to_owned(),
        Value::Object(a) => a.iter().map(|(k, v)| format!("{k}={}", plain(v))).collect::<Vec<_>>().join(","),
        other => plain(other),
    };
    let detail = match &e["detail"] {
        Value::Object(d) => d.iter().map(|(k, v)| format!("{k}={}", plain(v))).collect::<Vec<_>>().join(" "),
        other => plain(other),
    };
    let secret = e["secret"].as_str().filter(|s| !s.is_empty()).unwrap_or("-");
    format!(
        "{}  #{}  {}  {}  {actor}  {secret}  {detail}",
        plain(&e["time"]),
        plain(&e["seq"]),
        plain(&e["type"]),
        plain(&e["outcome"])
    )
    .trim_end()
    .to_owned()
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn times_are_durations_ago_or_rfc3339() {
        assert_eq!(when("2026-01-01T00:00:00Z").unwrap(), 1_767_225_600_000);
        let hour_ago = when("1h").unwrap();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
        assert!((now - hour_ago - 3_600_000).abs() < 5_000);
        assert!(when("yesterday-ish").is_err());
    }

    #[test]
    fn a_human_line_has_every_part() {
        let e: Value = serde_json::from_str(
            r#"{"seq":7,"time":"2026-11-22T02:00:00.000Z","type":"secret.read","class":"access","outcome":"denied",
                "actor":{"socket":"agent","uid":1000},"secret":"prod/telegram","detail":{"reason":"not found"}}"#,
        )
        .unwrap();
        assert_eq!(
            human(&e),
            "2026-11-22T02:00:00.000Z  #7  secret.read  denied  socket=agent,uid=1000  prod/telegram  reason=not found"
        );
    }
}
