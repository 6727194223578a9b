//! What a caller may do. Deny by default.
//!
//! For now the rule is per socket: the admin socket admits the vault's owner and
//! root; the agent socket admits only the owner until clients and grants exist.

use crate::identity::Peer;

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
        Socket::Agent => peer.uid == owner,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_socket_by_every_kind_of_caller() {
        let owner = 1000;
        let peer = |uid| Peer { uid, gid: uid, pid: Some(1) };
        let cases = [
            (Socket::Admin, Some(peer(1000)), true),
            (Socket::Admin, Some(peer(0)), true),
            (Socket::Admin, Some(peer(1001)), false),
            (Socket::Admin, None, false),
            (Socket::Agent, Some(peer(1000)), true),
            (Socket::Agent, Some(peer(0)), false),
            (Socket::Agent, Some(peer(1001)), false),
            (Socket::Agent, None, false),
        ];
        for (socket, p, want) in cases {
            assert_eq!(may_use(socket, p.as_ref(), owner), want, "{socket} {p:?}");
        }
    }
}
