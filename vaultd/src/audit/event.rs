//! What an audit entry says: who did what to which secret, and how it ended.
//! Never a value or a passphrase: where a value must be identified, its keyed
//! digest (`hmac-sha256:…`) stands in.

use crate::identity::Peer;
use crate::store::AuditRow;
use serde::Serialize;
use serde_json::{Map, Value, json};

/// Who acted: a peer on a socket (as the kernel attested it), or vaultd itself.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Actor {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// The client the caller was matched to, when one was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// The accessor of the bearer token the caller presented and passed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Set for actions vaultd takes on its own (startup, retention, checkpoints).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub vaultd: bool,
}

impl Actor {
    pub fn peer(socket: &'static str, peer: Option<&Peer>) -> Actor {
        Actor {
            socket: Some(socket),
            uid: peer.map(|p| p.uid),
            gid: peer.map(|p| p.gid),
            pid: peer.and_then(|p| p.pid),
            client: None,
            token: None,
            vaultd: false,
        }
    }

    /// This process, acting without a socket (vaultctl's offline break-glass).
    pub fn this_process(socket: &'static str) -> Actor {
        Actor {
            socket: Some(socket),
            uid: Some(rustix::process::getuid().as_raw()),
            gid: Some(rustix::process::getgid().as_raw()),
            pid: Some(rustix::process::getpid().as_raw_nonzero().get()),
            ..Actor::default()
        }
    }

    pub fn vaultd() -> Actor {
        Actor { vaultd: true, ..Actor::default() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Refused by policy or state: not found / not granted, sealed, wrong passphrase.
    Denied,
    /// Attempted and failed: a record that did not decrypt, a storage error.
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Denied => "denied",
            Outcome::Failed => "failed",
        }
    }
}

/// One thing that happened, before it is stored and chained.
#[derive(Debug, Clone)]
pub struct Event {
    /// `family.action`, e.g. `secret.read`, `vault.unlock`.
    pub kind: &'static str,
    pub outcome: Outcome,
    pub actor: Actor,
    /// `env/name`, when the event concerns one secret.
    pub secret: Option<String>,
    pub detail: Map<String, Value>,
}

impl Event {
    pub fn new(kind: &'static str, outcome: Outcome, actor: &Actor) -> Event {
        Event { kind, outcome, actor: actor.clone(), secret: None, detail: Map::new() }
    }

    pub fn secret(mut self, env: &str, name: &str) -> Event {
        self.secret = Some(format!("{env}/{name}"));
        self
    }

    /// Adds a detail field. Callers pass metadata only (versions, counts, reasons,
    /// digests), never a value.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Event {
        self.detail.insert(key.into(), value.into());
        self
    }

    /// The stored form, at `time_unix_ms`, numbered `seq`, not yet chained.
    pub fn to_row(&self, seq: u64, time_unix_ms: i64) -> AuditRow {
        AuditRow {
            seq,
            time_unix_ms,
            kind: self.kind.into(),
            class: self.class().into(),
            outcome: self.outcome.as_str().into(),
            actor: serde_json::to_string(&self.actor).unwrap_or_else(|_| "{}".into()),
            secret: self.secret.clone().unwrap_or_default(),
            detail: serde_json::to_string(&self.detail).unwrap_or_else(|_| "{}".into()),
            mac: None,
            records: None,
        }
    }

    /// The class `audit query --type` can select: every denial or failure is
    /// `security`; otherwise it follows from the kind.
    pub fn class(&self) -> &'static str {
        if self.outcome != Outcome::Ok {
            return "security";
        }
        match self.kind.split('.').next().unwrap_or_default() {
            // An alert: a rotation is due and nobody has done it.
            _ if self.kind == "rotation.due" => "security",
            "vault" | "request" | "client" | "token" | "incident" => "security",
            "rotation" => "change",
            "secret" if self.kind == "secret.read" || self.kind == "secret.reveal" => "access",
            "secret" => "change",
            "audit" => "audit",
            _ => "system",
        }
    }
}

/// Now, in milliseconds since the epoch: an entry's time.
pub(super) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// The JSON form of a stored entry: one line of `audit export` and of the JSONL
/// and syslog sinks. Field names are a stable contract.
pub fn entry_json(row: &AuditRow) -> Value {
    let parse = |text: &str| serde_json::from_str::<Value>(text).unwrap_or_else(|_| Value::String(text.into()));
    let time = humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(row.time_unix_ms.max(0) as u64),
    );
    json!({
        "seq": row.seq,
        "time": time.to_string(),
        "time_unix_ms": row.time_unix_ms,
        "type": row.kind,
        "class": row.class,
        "outcome": row.outcome,
        "actor": parse(&row.actor),
        "secret": row.secret,
        "detail": parse(&row.detail),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denials_are_security_whatever_the_kind() {
        let a = Actor::vaultd();
        assert_eq!(Event::new("secret.read", Outcome::Ok, &a).class(), "access");
        assert_eq!(Event::new("secret.read", Outcome::Denied, &a).class(), "security");
        assert_eq!(Event::new("secret.write", Outcome::Ok, &a).class(), "change");
        assert_eq!(Event::new("vault.unlock", Outcome::Ok, &a).class(), "security");
        assert_eq!(Event::new("audit.pruned", Outcome::Ok, &a).class(), "audit");
        assert_eq!(Event::new("daemon.start", Outcome::Ok, &a).class(), "system");
        assert_eq!(Event::new("rotation.promoted", Outcome::Ok, &a).class(), "change");
        assert_eq!(Event::new("rotation.due", Outcome::Ok, &a).class(), "security");
        assert_eq!(Event::new("rotation.failed", Outcome::Failed, &a).class(), "security");
    }

    #[test]
    fn actor_json_has_only_what_is_known() {
        let p = Peer { uid: 1000, gid: 100, pid: Some(42), start_time: None, pidfd: None };
        let text = serde_json::to_string(&Actor::peer("agent", Some(&p))).unwrap_or_default();
        assert_eq!(text, r#"{"socket":"agent","uid":1000,"gid":100,"pid":42}"#);
        assert_eq!(serde_json::to_string(&Actor::vaultd()).unwrap_or_default(), r#"{"vaultd":true}"#);
    }
}
