//! What a caller may do. Deny by default.
//!
//! The admin socket admits the vault's owner and root. The agent socket admits any
//! caller the kernel can name (its mode decides who can connect at all); each read
//! is then allowed for the owner, or for a caller matching an enabled client that
//! holds a grant for the secret, and for nobody else.

use crate::identity::Peer;
use crate::store::{ClientRow, TokenRow};
use std::path::Path;

/// Which of the two sockets a connection arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Socket {
    Agent,
    Admin,
}

impl Socket {
    pub fn name(self) -> &'static str {
        match self {
            Socket::Agent => "agent",
            Socket::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether `peer` may call the vault API on `socket` of a vault run by uid `owner`.
pub fn may_use(socket: Socket, peer: Option<&Peer>, owner: u32) -> bool {
    let Some(peer) = peer else { return false };
    match socket {
        Socket::Admin => peer.uid == owner || peer.uid == 0,
        Socket::Agent => true,
    }
}

/// Why a bearer token is refused, or `None` when it is good for a use by a caller
/// with `uid` at `now`. The caller is told only "invalid or expired token"; the
/// reason goes to the audit log.
pub fn token_refusal(token: &TokenRow, uid: u32, now: i64) -> Option<&'static str> {
    if token.revoked_unix.is_some() {
        return Some("revoked");
    }
    if token.expires_unix.is_some_and(|t| now >= t) {
        return Some("expired");
    }
    let last = token.last_used_unix.unwrap_or(token.created_unix);
    if token.idle_secs.is_some_and(|idle| now - last >= idle) {
        return Some("idle too long");
    }
    if token.uses_left.is_some_and(|n| n <= 0) {
        return Some("no uses left");
    }
    if token.bind_uid.is_some_and(|bound| bound != uid) {
        return Some("used from another uid");
    }
    None
}

/// Why a read is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadAccess {
    /// The vault's owner reads everything (`vaultctl get`).
    Owner,
    /// A client the caller matches holds a grant for the secret.
    Client(String),
}

/// Whether `peer` may read `env/name`. `clients` are the enabled clients with the
/// caller's uid; `exe` gives the caller's executable, read only if a client asks.
pub fn read_access(
    owner: u32,
    peer: &Peer,
    exe: impl FnOnce() -> Option<std::path::PathBuf>,
    clients: &[ClientRow],
    env: &str,
    name: &str,
) -> Option<ReadAccess> {
    if peer.uid == owner {
        return Some(ReadAccess::Owner);
    }
    read_access_as(peer, exe, clients, env, name)
}

/// [`read_access`] for a caller that is not the owner (a token's caller is judged
/// only by the token's client).
pub fn read_access_as(
    peer: &Peer,
    exe: impl FnOnce() -> Option<std::path::PathBuf>,
    clients: &[ClientRow],
    env: &str,
    name: &str,
) -> Option<ReadAccess> {
    let mut exe = Some(exe);
    let mut caller_exe = None;
    for c in clients.iter().filter(|c| c.enabled && c.uid == peer.uid) {
        if c.gid.is_some_and(|gid| gid != peer.gid) {
            continue;
        }
        if let Some(want) = &c.exe {
            if let Some(read) = exe.take() {
                caller_exe = read();
            }
            if caller_exe.as_deref() != Some(Path::new(want)) {
                continue;
            }
        }
        if c.grants.iter().any(|p| vault_proto::names::pattern_matches(p, env, name)) {
            return Some(ReadAccess::Client(c.name.clone()));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_socket_by_every_kind_of_caller() {
        let owner = 1000;
        let peer = |uid| Peer { uid, gid: uid, pid: Some(1), start_time: None };
        let cases = [
            (Socket::Admin, Some(peer(1000)), true),
            (Socket::Admin, Some(peer(0)), true),
            (Socket::Admin, Some(peer(1001)), false),
            (Socket::Admin, None, false),
            (Socket::Agent, Some(peer(1000)), true),
            (Socket::Agent, Some(peer(0)), true),
            (Socket::Agent, Some(peer(1001)), true),
            (Socket::Agent, None, false),
        ];
        for (socket, p, want) in cases {
            assert_eq!(may_use(socket, p.as_ref(), owner), want, "{socket} {p:?}");
        }
    }

    fn client(name: &str, uid: u32, gid: Option<u32>, exe: Option<&str>, enabled: bool, grants: &[&str]) -> ClientRow {
        ClientRow {
            name: name.into(),
            uid,
            gid,
            exe: exe.map(Into::into),
            enabled,
            grants: grants.iter().map(|g| (*g).into()).collect(),
            created_unix: 0,
        }
    }

    #[test]
    fn reads_by_every_kind_of_caller() {
        let owner = 1000;
        let bot = client("bot", 2000, Some(2000), Some("/usr/bin/bot"), true, &["prod/telegram"]);
        let any_exe = client("worker", 3000, None, None, true, &["prod/*"]);
        let off = client("off", 4000, None, None, false, &["prod/*"]);
        let clients = [bot, any_exe, off];
        let peer = |uid, gid| Peer { uid, gid, pid: Some(7), start_time: None };
        // (who, caller, its executable, secret name in prod, expected access)
        let cases = [
            ("owner", peer(owner, owner), None, "telegram", Some(ReadAccess::Owner)),
            (
                "granted client",
                peer(2000, 2000),
                Some("/usr/bin/bot"),
                "telegram",
                Some(ReadAccess::Client("bot".into())),
            ),
            ("client without the grant", peer(2000, 2000), Some("/usr/bin/bot"), "openai", None),
            ("wrong executable", peer(2000, 2000), Some("/usr/bin/python3"), "telegram", None),
            ("unreadable executable", peer(2000, 2000), None, "telegram", None),
            ("wrong gid", peer(2000, 9), Some("/usr/bin/bot"), "telegram", None),
            ("wildcard grant", peer(3000, 1), None, "openai", Some(ReadAccess::Client("worker".into()))),
            ("disabled client", peer(4000, 4000), None, "telegram", None),
            ("other uid, no client", peer(5000, 5000), None, "telegram", None),
        ];
        for (who, p, exe, name, want) in cases {
            let exe = || exe.map(std::path::PathBuf::from);
            assert_eq!(read_access(owner, &p, exe, &clients, "prod", name), want, "{who}");
        }
        let no_exe = || None;
        assert_eq!(read_access(owner, &peer(3000, 1), no_exe, &clients, "staging", "openai"), None, "other env");
    }

    #[test]
    fn token_rules() {
        let good = TokenRow {
            accessor: "a".into(),
            client: "bot".into(),
            bind_uid: Some(2000),
            created_unix: 100,
            expires_unix: Some(200),
            idle_secs: Some(50),
            uses_left: Some(1),
            last_used_unix: None,
            revoked_unix: None,
        };
        let cases = [
            ("valid", good.clone(), 2000, 120, None),
            ("expired", good.clone(), 2000, 200, Some("expired")),
            ("revoked", TokenRow { revoked_unix: Some(110), ..good.clone() }, 2000, 120, Some("revoked")),
            ("idle", good.clone(), 2000, 150, Some("idle too long")),
            ("idle since last use", TokenRow { last_used_unix: Some(140), ..good.clone() }, 2000, 180, None),
            ("used up", TokenRow { uses_left: Some(0), ..good.clone() }, 2000, 120, Some("no uses left")),
            ("wrong uid", good.clone(), 2001, 120, Some("used from another uid")),
            ("any uid", TokenRow { bind_uid: None, ..good.clone() }, 2001, 120, None),
            (
                "no limits",
                TokenRow { expires_unix: None, idle_secs: None, uses_left: None, ..good },
                2000,
                1 << 40,
                None,
            ),
        ];
        for (what, token, uid, now, want) in cases {
            assert_eq!(token_refusal(&token, uid, now), want, "{what}");
        }
    }
}
