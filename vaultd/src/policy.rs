//! What a caller may do. Deny by default.
//!
//! The admin socket admits the vault's owner and root. The agent socket admits any
//! caller the kernel can name (its mode decides who can connect at all); each read
//! is then allowed for the owner, or for a caller matching an enabled client that
//! holds a grant for the secret, and for nobody else.

use crate::identity::{Caller, Peer, Process};
use crate::state::{Client, GrantKind, Image, Token};
use std::path::Path;
use std::sync::Arc;

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

/// Who is reading, once identified.
pub enum Reader {
    /// The vault's owner: reads everything on the agent socket.
    Owner,
    /// Judged by the clients its uid (and gid, executable) match.
    Kernel(Caller),
    /// Judged by the token's client alone (the client as it was when the token
    /// was checked; every decision looks at the token and client as they are now).
    Token { client: Arc<Client>, accessor: String, uid: u32 },
    /// Nobody the vault knows (no credentials).
    Nobody,
}

/// What a caller wants to do with a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Receive its value.
    Read,
    /// Have it used on its behalf (the credential broker), never receiving it.
    Use,
}

/// A read allowed (by the owner, or by a client's grant) or denied, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allowed { client: Option<String> },
    Denied(&'static str),
}

/// The one access decision: whether `reader` may do `action` with `env/name`
/// at `now`, given the verified state. Every read, every watch update, every
/// token use and every brokered use asks this; nothing else decides.
pub fn decide(reader: &Reader, state: &Image, env: &str, name: &str, action: Action, now: i64) -> Decision {
    match reader {
        Reader::Owner => Decision::Allowed { client: None },
        Reader::Nobody => Decision::Denied("no credentials"),
        Reader::Kernel(caller) => {
            // Tokens exist to tell apart agents that share a uid: once a uid has
            // a client that needs one, the uid alone matches none of its clients.
            if state.clients().any(|c| c.uid == caller.uid() && c.token_only) {
                return Decision::Denied("this uid's clients need a token");
            }
            match granting_client(caller, state.clients().map(|c| &**c), env, name, action) {
                Ok(client) => Decision::Allowed { client: Some(client.into()) },
                Err(why) => Decision::Denied(why),
            }
        }
        Reader::Token { accessor, uid, .. } => {
            let Some(token) = state.token(accessor) else { return Decision::Denied("token removed") };
            // Uses are counted once per request, when it is served, not here.
            if let Some(why) = token_refusal(token, state.last_use(token), *uid, now).filter(|why| *why != NO_USES_LEFT)
            {
                return Decision::Denied(why);
            }
            let Some(client) = state.client(&token.client).filter(|c| c.enabled) else {
                return Decision::Denied("client disabled or removed");
            };
            if grants(client, env, name, action) {
                Decision::Allowed { client: Some(client.name.clone()) }
            } else {
                Decision::Denied("not granted")
            }
        }
    }
}

const NO_USES_LEFT: &str = "no uses left";

/// Why a bearer token is refused, or `None` when it is good for a use by a caller
/// with `uid` at `now`, given when it was `last_used`. The caller is told only
/// "invalid or expired token"; the reason goes to the audit log.
pub fn token_refusal(token: &Token, last_used: Option<i64>, uid: u32, now: i64) -> Option<&'static str> {
    if token.revoked_unix.is_some() {
        return Some("revoked");
    }
    if token.expires_unix.is_some_and(|t| now >= t) {
        return Some("expired");
    }
    let last = last_used.unwrap_or(token.created_unix);
    if token.idle_secs.is_some_and(|idle| now - last >= idle) {
        return Some("idle too long");
    }
    if token.uses_left.is_some_and(|n| n <= 0) {
        return Some(NO_USES_LEFT);
    }
    if token.bind_uid.is_some_and(|bound| bound != uid) {
        return Some("used from another uid");
    }
    None
}

/// Whether one of `client`'s grants covers `action` on `env/name`: a read
/// grant covers both, a use grant only use.
fn grants(client: &Client, env: &str, name: &str, action: Action) -> bool {
    client.grants.iter().any(|(p, g)| {
        (g.kind == GrantKind::Read || action == Action::Use) && vault_proto::names::pattern_matches(p, env, name)
    })
}

/// The first enabled client that `caller` matches (every selector) and that holds
/// a grant for `env/name` (for `action`); else why not, for the audit log ("not
/// granted", or why the executable did not match the last client that would
/// have granted it).
fn granting_client<'c>(
    caller: &dyn Process,
    clients: impl Iterator<Item = &'c Client>,
    env: &str,
    name: &str,
    action: Action,
) -> Result<&'c str, &'static str> {
    let mut refusal = "not granted";
    let candidates = clients
        .filter(|c| c.enabled && !c.token_only && c.uid == caller.uid() && c.gid.is_none_or(|gid| gid == caller.gid()))
        .filter(|c| grants(c, env, name, action));
    for client in candidates {
        match exe_refusal(caller, client) {
            None => return Ok(&client.name),
            Some(why) => refusal = why,
        }
    }
    Err(refusal)
}

/// Why `caller` does not run what `client` pins, if it pins anything.
fn exe_refusal(caller: &dyn Process, client: &Client) -> Option<&'static str> {
    if let Some(want) = &client.exe {
        match caller.runs(Path::new(want)) {
            Ok(true) => {}
            Ok(false) => return Some("executable differs"),
            Err(why) => return Some(why.reason()),
        }
    }
    if let Some(want) = &client.exe_sha256 {
        match caller.exe_sha256() {
            Ok(sha) if sha == *want => {}
            Ok(_) => return Some("executable hash differs"),
            Err(why) => return Some(why.reason()),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Unattested;

    #[test]
    fn every_socket_by_every_kind_of_caller() {
        let owner = 1000;
        let peer = |uid| Peer { uid, gid: uid, pid: Some(1), accepted: None };
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

    fn client(name: &str, uid: u32, gid: Option<u32>, exe: Option<&str>, enabled: bool, grants: &[&str]) -> Client {
        Client {
            id: 0,
            name: name.into(),
            uid,
            gid,
            exe: exe.map(Into::into),
            exe_sha256: None,
            enabled,
            token_only: false,
            grants: grants
                .iter()
                .map(|g| ((*g).into(), crate::state::Grant { kind: GrantKind::Read, created_unix: 0 }))
                .collect(),
            created_unix: 0,
        }
    }

    struct Fake {
        uid: u32,
        gid: u32,
        exe: Option<&'static str>,
        sha: Option<&'static str>,
    }

    impl Process for Fake {
        fn uid(&self) -> u32 {
            self.uid
        }
        fn gid(&self) -> u32 {
            self.gid
        }
        fn runs(&self, path: &Path) -> Result<bool, Unattested> {
            self.exe.map(|exe| Path::new(exe) == path).ok_or(Unattested::Unreadable)
        }
        fn exe_sha256(&self) -> Result<String, Unattested> {
            self.sha.map(Into::into).ok_or(Unattested::Unreadable)
        }
    }

    #[test]
    fn reads_by_every_kind_of_caller() {
        let bot = client("bot", 2000, Some(2000), Some("/usr/bin/bot"), true, &["prod/telegram"]);
        let pinned =
            Client { exe_sha256: Some("ab12".into()), ..client("pinned", 6000, None, None, true, &["prod/*"]) };
        let any_exe = client("worker", 3000, None, None, true, &["prod/*"]);
        let off = client("off", 4000, None, None, false, &["prod/*"]);
        let clients = [bot, pinned, any_exe, off];
        let caller = |uid, gid, exe, sha| Fake { uid, gid, exe, sha };
        let bot_exe = Some("/usr/bin/bot");
        // (who, caller, secret name in prod, the client that grants it or why not)
        let cases = [
            ("granted client", caller(2000, 2000, bot_exe, None), "telegram", Ok("bot")),
            ("client without the grant", caller(2000, 2000, bot_exe, None), "openai", Err("not granted")),
            (
                "wrong executable",
                caller(2000, 2000, Some("/usr/bin/python3"), None),
                "telegram",
                Err("executable differs"),
            ),
            ("unreadable executable", caller(2000, 2000, None, None), "telegram", Err("executable unreadable")),
            ("wrong gid", caller(2000, 9, bot_exe, None), "telegram", Err("not granted")),
            ("wildcard grant", caller(3000, 1, None, None), "openai", Ok("worker")),
            ("disabled client", caller(4000, 4000, None, None), "telegram", Err("not granted")),
            ("other uid, no client", caller(5000, 5000, None, None), "telegram", Err("not granted")),
            ("pinned hash matches", caller(6000, 1, None, Some("ab12")), "telegram", Ok("pinned")),
            ("pinned hash differs", caller(6000, 1, None, Some("ffff")), "telegram", Err("executable hash differs")),
            ("pinned hash unreadable", caller(6000, 1, None, None), "telegram", Err("executable unreadable")),
        ];
        for (who, c, name, want) in cases {
            assert_eq!(granting_client(&c, clients.iter(), "prod", name, Action::Read), want, "{who}");
        }
        let other_env =
            granting_client(&caller(3000, 1, None, None), clients.iter(), "staging", "openai", Action::Read);
        assert_eq!(other_env, Err("not granted"), "other env");
    }

    #[test]
    fn token_rules() {
        let good = Token {
            accessor: "a".into(),
            hash: vec![],
            client: "bot".into(),
            bind_uid: Some(2000),
            bind_exe: None,
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
            ("revoked", Token { revoked_unix: Some(110), ..good.clone() }, 2000, 120, Some("revoked")),
            ("idle", good.clone(), 2000, 150, Some("idle too long")),
            ("idle since last use", Token { last_used_unix: Some(140), ..good.clone() }, 2000, 180, None),
            ("used up", Token { uses_left: Some(0), ..good.clone() }, 2000, 120, Some("no uses left")),
            ("wrong uid", good.clone(), 2001, 120, Some("used from another uid")),
            ("any uid", Token { bind_uid: None, ..good.clone() }, 2001, 120, None),
            ("no limits", Token { expires_unix: None, idle_secs: None, uses_left: None, ..good }, 2000, 1 << 40, None),
        ];
        for (what, token, uid, now, want) in cases {
            assert_eq!(token_refusal(&token, token.last_used_unix, uid, now), want, "{what}");
        }
    }
}
