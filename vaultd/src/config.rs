//! `vaultd --config FILE`: settings that are not secrets (TOML).

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Mode of the agent socket, in octal: "0600" (default) lets only the vault's
    /// owner connect; "0660" with a shared group, or "0666", lets agents running as
    /// other users reach it. Reaching the socket is not access: what a caller may
    /// read is decided per call from its kernel-attested identity.
    #[serde(default = "default_agent_socket_mode", deserialize_with = "octal_mode")]
    pub agent_socket_mode: u32,
    /// Group id to give the agent socket, so `agent_socket_mode = "0660"` admits
    /// exactly the agents in that group (vaultd must be a member, or root).
    #[serde(default)]
    pub agent_socket_gid: Option<u32>,
    #[serde(default)]
    pub audit: AuditConfig,
    /// `[limits]`: rates (secrets read per second), what one uid may hold open
    /// (connections, watches, reads in flight) and connection timeouts.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// `[rotation]`: versions kept, scheduler period, hook limits.
    #[serde(default)]
    pub rotation: RotationConfig,
    #[serde(default)]
    pub keys: KeysConfig,
    #[serde(default)]
    pub integrity: IntegrityConfig,
    /// `[broker]`: the credential broker (see `broker`).
    #[serde(default)]
    pub broker: crate::broker::BrokerConfig,
    /// `[[alert]]`: where security alerts go (see `broker::alert`).
    #[serde(default, rename = "alert")]
    pub alerts: Vec<crate::broker::AlertConfig>,
}

/// `[integrity]`: what vaultd can check beyond the data directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntegrityConfig {
    /// A file outside the data directory where vaultd keeps the newest state
    /// generation and audit head it wrote, under a MAC, so that a whole older
    /// copy of the data directory put back is noticed at unlock (see
    /// `state::anchor` and SECURITY.md). Unset: no anchor.
    #[serde(default)]
    pub anchor: Option<PathBuf>,
}

/// `[keys]`: the key-term lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// Values one key term may seal before vaultd starts a new term on its own.
    /// AES-GCM with random 96-bit nonces stays safe well below 2^32 messages per
    /// key (NIST SP 800-38D); the default, 2^30, keeps a wide margin.
    #[serde(default = "default_max_encryptions", deserialize_with = "positive")]
    pub max_encryptions_per_term: u64,
}

impl Default for KeysConfig {
    fn default() -> Self {
        KeysConfig { max_encryptions_per_term: default_max_encryptions() }
    }
}

fn default_max_encryptions() -> u64 {
    1 << 30
}

/// The ceiling is 2^32 itself: past it random nonces are no longer safe.
fn positive<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let n = u64::deserialize(d)?;
    if n == 0 || n > 1 << 32 {
        return Err(serde::de::Error::custom(format!(
            "max_encryptions_per_term = {n}: expected 1 ..= 4294967296 (2^32)"
        )));
    }
    Ok(n)
}

impl Default for Config {
    fn default() -> Self {
        Config {
            agent_socket_mode: default_agent_socket_mode(),
            agent_socket_gid: None,
            audit: AuditConfig::default(),
            limits: LimitsConfig::default(),
            rotation: RotationConfig::default(),
            keys: KeysConfig::default(),
            integrity: IntegrityConfig::default(),
            broker: Default::default(),
            alerts: Vec::new(),
        }
    }
}

/// `[rotation]` in vaultd's config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RotationConfig {
    /// Versions kept per secret (the newest; older retired ones are deleted).
    pub keep_versions: u32,
    /// How often the scheduler looks for due rotations and ended grace periods.
    #[serde(deserialize_with = "duration_value")]
    pub check_every: Duration,
    /// Limits of one hook run.
    #[serde(deserialize_with = "duration_value")]
    pub hook_timeout: Duration,
    pub hook_memory_mib: u64,
    pub hook_cpu_secs: u64,
    pub hook_processes: u64,
}

impl Default for RotationConfig {
    fn default() -> Self {
        RotationConfig {
            keep_versions: 10,
            check_every: Duration::from_secs(30),
            hook_timeout: Duration::from_secs(30),
            hook_memory_mib: 512,
            hook_cpu_secs: 20,
            hook_processes: 64,
        }
    }
}

/// `[limits]` in the config.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Secrets per second each client may read, sustained, and in a burst (a
    /// `GetSecrets` of N names counts N).
    pub client_rate: f64,
    pub client_burst: f64,
    /// Secrets per second for all callers but the owner together.
    pub global_rate: f64,
    pub global_burst: f64,
    /// Agent connections open at once, in all and per uid (the owner exempt).
    /// Unset: derived from the file limit (see `limits::ConnectionCaps`).
    pub connections: Option<usize>,
    pub connections_per_uid: Option<usize>,
    /// Watch streams open at once per uid (the owner has slots of its own).
    pub watches_per_uid: usize,
    /// Reads in flight at once per uid (watch streams are counted apart).
    pub requests_per_uid: usize,
    /// A connection that has not sent the HTTP/2 preface within this is closed.
    #[serde(deserialize_with = "duration_value")]
    pub handshake_timeout: Duration,
    /// A connection with no open stream for this long is closed (gracefully).
    #[serde(deserialize_with = "duration_value")]
    pub idle_timeout: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            client_rate: 100.0,
            client_burst: 200.0,
            global_rate: 100_000.0,
            global_burst: 100_000.0,
            connections: None,
            connections_per_uid: None,
            watches_per_uid: 256,
            requests_per_uid: 64,
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// `[audit]`: what is recorded, how long it is kept, where copies go.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Record every agent read (default). Turning it off is for measuring the cost
    /// of auditing; it is recorded at startup as a `daemon.start` detail.
    #[serde(default = "yes")]
    pub reads: bool,
    /// Delete entries older than this (e.g. "90d"); the rest still verifies. Unset: keep all.
    #[serde(default, deserialize_with = "duration")]
    pub retention: Option<Duration>,
    /// Copies for a SIEM: `[[audit.sink]] type = "jsonl", path = "…"` ("-" is stdout)
    /// or `type = "syslog"` (socket defaults to /dev/log, where journald listens too).
    #[serde(default, rename = "sink")]
    pub sinks: Vec<SinkConfig>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig { reads: true, retention: None, sinks: Vec::new() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum SinkConfig {
    Jsonl {
        path: PathBuf,
    },
    Syslog {
        #[serde(default = "dev_log")]
        socket: PathBuf,
    },
}

fn yes() -> bool {
    true
}

fn dev_log() -> PathBuf {
    PathBuf::from("/dev/log")
}

fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration_value(d).map(Some)
}

/// A humantime duration ("90d", "12h", "500ms").
pub(crate) fn duration_value<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s)
        .map_err(|e| serde::de::Error::custom(format!("{s:?} is not a duration like \"90d\" or \"12h\": {e}")))
}

fn default_agent_socket_mode() -> u32 {
    0o600
}

pub(crate) fn octal_mode<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let s = String::deserialize(d)?;
    match u32::from_str_radix(s.trim_start_matches("0o"), 8) {
        Ok(mode) if mode & !0o666 == 0 && mode & 0o600 == 0o600 => Ok(mode),
        _ => Err(serde::de::Error::custom(format!(
            "agent_socket_mode {s:?}: expected an octal mode with owner rw and no execute bits, like \"0600\" or \"0660\""
        ))),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("config file {path}: {detail}")]
pub struct ConfigError {
    path: String,
    detail: String,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let err = |detail: String| ConfigError { path: path.display().to_string(), detail };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        toml::from_str(&text).map_err(|e| err(e.message().to_string()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_modes_and_refuses_nonsense() {
        assert_eq!(toml::from_str::<Config>("").unwrap(), Config::default());
        assert_eq!(toml::from_str::<Config>("agent_socket_mode = \"0660\"").unwrap().agent_socket_mode, 0o660);
        assert_eq!(toml::from_str::<Config>("agent_socket_gid = 1234").unwrap().agent_socket_gid, Some(1234));
        for bad in ["\"0777\"", "\"0060\"", "\"rw\"", "\"1600\""] {
            assert!(toml::from_str::<Config>(&format!("agent_socket_mode = {bad}")).is_err(), "{bad}");
        }
        assert!(toml::from_str::<Config>("unknown = 1").is_err());
    }

    #[test]
    fn parses_the_keys_section() {
        assert_eq!(Config::default().keys.max_encryptions_per_term, 1 << 30);
        let keys = toml::from_str::<Config>("[keys]\nmax_encryptions_per_term = 1000").unwrap().keys;
        assert_eq!(keys.max_encryptions_per_term, 1000);
        for bad in ["0", "4294967297", "-1", "\"many\""] {
            let text = format!("[keys]\nmax_encryptions_per_term = {bad}");
            assert!(toml::from_str::<Config>(&text).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_the_audit_section() {
        let text = r#"
            [audit]
            reads = false
            retention = "90d"
            [[audit.sink]]
            type = "jsonl"
            path = "/var/log/vaultd/audit.jsonl"
            [[audit.sink]]
            type = "syslog"
        "#;
        let audit = toml::from_str::<Config>(text).unwrap().audit;
        assert!(!audit.reads);
        assert_eq!(audit.retention, Some(Duration::from_secs(90 * 86400)));
        assert_eq!(
            audit.sinks,
            [
                SinkConfig::Jsonl { path: "/var/log/vaultd/audit.jsonl".into() },
                SinkConfig::Syslog { socket: dev_log() }
            ]
        );
        assert!(toml::from_str::<Config>("[audit]\nretention = \"soon\"").is_err());
        assert!(toml::from_str::<Config>("[[audit.sink]]\ntype = \"carrier-pigeon\"").is_err());
    }

    #[test]
    fn parses_the_rotation_section() {
        let text = "[rotation]\nkeep_versions = 3\ncheck_every = \"1s\"\nhook_timeout = \"5s\"\nhook_memory_mib = 64";
        let rotation = toml::from_str::<Config>(text).unwrap().rotation;
        assert_eq!(rotation.keep_versions, 3);
        assert_eq!(rotation.check_every, Duration::from_secs(1));
        assert_eq!(rotation.hook_timeout, Duration::from_secs(5));
        assert_eq!(rotation.hook_memory_mib, 64);
        assert_eq!(rotation.hook_processes, RotationConfig::default().hook_processes);
        assert!(toml::from_str::<Config>("[rotation]\nhook_timeout = \"never\"").is_err());
    }
}
