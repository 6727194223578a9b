//! Who is calling: the peer's credentials as the kernel reports them at accept
//! (SO_PEERCRED). Never anything the caller says about itself.

use tokio::net::UnixStream;

/// A connected peer's kernel-attested credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

impl Peer {
    /// The peer of an accepted connection; `None` when the kernel gives no
    /// credentials, which callers treat as a denial.
    pub fn of(stream: &UnixStream) -> Option<Peer> {
        let cred = stream.peer_cred().ok()?;
        Some(Peer { uid: cred.uid(), gid: cred.gid(), pid: cred.pid() })
    }
}
