//! What an audit entry says: who did what to which secret, and how it ended.
//! Never a value or a passphrase: where a value must be identified, its keyed
//! digest (`hmac-sha256:…`) stands in.

use super::Kind;
use super::chain;
use super::refusals::Refused;
use crate::identity::Peer;
use crate::store::AuditRow;
use serde::Serialize;
use serde_json::{Map, Value, json};

/// Who acted: a peer on a socket (as the kernel attested it), or vaultd itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actor {
    pub socket: Option<&'static str>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub pid: Option<i32>,
    /// The client the caller was matched to, when one was.
    pub client: Option<String>,
    /// The accessor of the bearer token the caller presented and passed.
    pub token: Option<String>,
    /// Set for actions vaultd takes on its own (startup, retention, checkpoints).
    pub vaultd: bool,
}

/// An actor as an entry stores it (JSON, only what is known), with the client
/// it acted as: borrowed, so a read's record needs no copy of the actor.
#[derive(Serialize)]
struct ActorJson<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    socket: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    vaultd: bool,
}

impl Serialize for Actor {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.acting_as(self.client.as_deref()).serialize(serializer)
    }
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

    /// Its JSON, as `client` (a read's client is the one whose grant it used,
    /// whatever `self.client` says).
    fn acting_as<'a>(&'a self, client: Option<&'a str>) -> ActorJson<'a> {
        let Actor { socket, uid, gid, pid, client: _, ref token, vaultd } = *self;
        ActorJson { socket, uid, gid, pid, client, token: token.as_deref(), vaultd }
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
    pub kind: Kind,
    pub outcome: Outcome,
    pub actor: Actor,
    /// `env/name`, when the event concerns one secret.
    pub secret: Option<String>,
    pub detail: Map<String, Value>,
}

impl Event {
    pub fn new(kind: Kind, outcome: Outcome, actor: &Actor) -> Event {
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
            kind: self.kind.as_str().into(),
            class: self.class().into(),
            outcome: self.outcome.as_str().into(),
            actor: serde_json::to_string(&self.actor).unwrap_or_else(|_| "{}".into()),
            secret: self.secret.clone().unwrap_or_default(),
            detail: serde_json::to_string(&self.detail).unwrap_or_else(|_| "{}".into()),
            mac: None,
            records: None,
        }
    }

    /// What `audit query --type` selects it by.
    pub fn class(&self) -> &'static str {
        self.kind.class(self.outcome).as_str()
    }
}

/// A record of something that changed nothing, for the read journal: an
/// [`Event`], or a [`Read`] encoded without being built as one.
pub trait Record {
    /// Appends the entry's `content` (see `chain::content`), numbered `seq`.
    fn encode(&self, out: &mut Vec<u8>, seq: u64, time_unix_ms: i64);
    /// The event, for when it is stored without the journal (while sealed).
    fn into_event(self) -> Event;
    /// What it says of a caller refused, if it is a refusal (see `refusals`).
    fn refused(&self) -> Option<Refused<'_>>;
}

impl Record for Event {
    fn encode(&self, out: &mut Vec<u8>, seq: u64, time_unix_ms: i64) {
        let secret = self.secret.as_deref().unwrap_or_default();
        let fields = [self.kind.as_str(), self.class(), self.outcome.as_str()];
        chain::encode(out, seq, time_unix_ms, fields, &self.actor, &[secret], &self.detail);
    }

    fn into_event(self) -> Event {
        self
    }

    fn refused(&self) -> Option<Refused<'_>> {
        let caller =
            self.outcome == Outcome::Denied && self.actor.socket.is_some() && self.kind != Kind::RequestRefusals;
        caller.then(|| Refused {
            kind: self.kind,
            actor: &self.actor,
            secret: self.secret.as_deref().and_then(|s| s.split_once('/')),
        })
    }
}

/// An agent's read of one secret, allowed or not. Made for every read, so it
/// borrows from the request and is encoded as it is: building an [`Event`]
/// (copies of the actor and names, a map for the detail) would cost more than
/// encoding it.
#[derive(Debug)]
pub struct Read<'a> {
    pub kind: Kind,
    pub outcome: Outcome,
    pub actor: &'a Actor,
    /// The client whose grant allowed it.
    pub client: Option<&'a str>,
    pub env: &'a str,
    pub name: &'a str,
    pub detail: ReadDetail,
}

/// A read's detail: `{"version":N}` or `{"reason":"…"}`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadDetail {
    Version(u64),
    Reason(std::borrow::Cow<'static, str>),
}

impl Record for Read<'_> {
    fn encode(&self, out: &mut Vec<u8>, seq: u64, time_unix_ms: i64) {
        let fields = [self.kind.as_str(), self.kind.class(self.outcome).as_str(), self.outcome.as_str()];
        let actor = self.actor.acting_as(self.client);
        chain::encode(out, seq, time_unix_ms, fields, &actor, &[self.env, "/", self.name], &self.detail);
    }

    fn into_event(self) -> Event {
        let mut actor = self.actor.clone();
        actor.client = self.client.map(str::to_owned);
        let event = Event::new(self.kind, self.outcome, &actor).secret(self.env, self.name);
        match self.detail {
            ReadDetail::Version(version) => event.with("version", version),
            ReadDetail::Reason(reason) => event.with("reason", reason.into_owned()),
        }
    }

    fn refused(&self) -> Option<Refused<'_>> {
        let secret = Some((self.env, self.name));
        (self.outcome == Outcome::Denied).then_some(Refused { kind: self.kind, actor: self.actor, secret })
    }
}

pub(super) use crate::clock::now_ms;

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
        assert_eq!(Event::new(Kind::SecretRead, Outcome::Ok, &a).class(), "access");
        assert_eq!(Event::new(Kind::SecretRead, Outcome::Denied, &a).class(), "security");
        assert_eq!(Event::new(Kind::SecretWrite, Outcome::Ok, &a).class(), "change");
        assert_eq!(Event::new(Kind::SecretList, Outcome::Ok, &a).class(), "access");
        assert_eq!(Event::new(Kind::VaultUnlock, Outcome::Ok, &a).class(), "security");
        assert_eq!(Event::new(Kind::AuditPruned, Outcome::Ok, &a).class(), "audit");
        assert_eq!(Event::new(Kind::DaemonStart, Outcome::Ok, &a).class(), "system");
        assert_eq!(Event::new(Kind::RotationPromoted, Outcome::Ok, &a).class(), "change");
        assert_eq!(Event::new(Kind::RotationDue, Outcome::Ok, &a).class(), "security");
        assert_eq!(Event::new(Kind::RotationFailed, Outcome::Failed, &a).class(), "security");
    }

    #[test]
    fn actor_json_has_only_what_is_known() {
        let p = Peer { uid: 1000, gid: 100, pid: Some(42), accepted: None };
        let text = serde_json::to_string(&Actor::peer("agent", Some(&p))).unwrap_or_default();
        assert_eq!(text, r#"{"socket":"agent","uid":1000,"gid":100,"pid":42}"#);
        assert_eq!(serde_json::to_string(&Actor::vaultd()).unwrap_or_default(), r#"{"vaultd":true}"#);
    }
}
