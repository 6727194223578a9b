//! Who is calling: the peer's credentials as the kernel reports them at accept
//! (SO_PEERCRED), and the start time of the peer process, read at accept too, so
//! later reads of `/proc/PID` can tell if the pid now names another process.
//! Never anything the caller says about itself (argv, comm, environment).

use std::path::PathBuf;
use tokio::net::UnixStream;

/// A connected peer's kernel-attested credentials.
#[derive(Debug, Clone)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
    /// The process's start time (clock ticks since boot) when it connected.
    pub start_time: Option<u64>,
    /// A pidfd for the process that connected (SO_PEERPIDFD), where the kernel
    /// gives one: the surest way to know a pid still names that process.
    pub pidfd: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
}

impl Peer {
    pub(crate) fn of_stream(stream: &UnixStream) -> Option<Peer> {
        let cred = stream.peer_cred().ok()?;
        let pid = cred.pid();
        let pidfd = crate::sys::peer_pidfd(std::os::fd::AsFd::as_fd(stream)).ok().map(std::sync::Arc::new);
        Some(Peer { uid: cred.uid(), gid: cred.gid(), pid, start_time: pid.and_then(start_time), pidfd })
    }

    /// The peer of the connection a request arrived on, as read at accept;
    /// `None` when the kernel gave no credentials, which callers treat as a denial.
    pub fn of_request<T>(req: &tonic::Request<T>) -> Option<Peer> {
        req.extensions().get::<Attestation>()?.0.clone()
    }

    /// The caller's executable, as the kernel names it (`/proc/PID/exe`), or
    /// `None` when it cannot be read or the pid no longer names the process that
    /// connected (it exited and the pid was reused: start time or owner differ).
    pub fn exe(&self) -> Option<PathBuf> {
        let pid = self.pid?;
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
        self.still_same_process().then_some(exe)
    }

    /// Checked after reading `/proc/PID/…`: the pidfd taken at accept (where the
    /// kernel gave one) still names a live process with this pid; and, as SPIRE
    /// does, the pid has the start time it had at accept and the same owner.
    fn still_same_process(&self) -> bool {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::MetadataExt;
        let Some(pid) = self.pid else { return false };
        if let Some(pidfd) = &self.pidfd {
            let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd())).unwrap_or_default();
            if !info.lines().any(|l| l.strip_prefix("Pid:").is_some_and(|p| p.trim() == pid.to_string())) {
                return false; // exited (Pid: -1), so the pid may name another process now
            }
        }
        let owner = std::fs::metadata(format!("/proc/{pid}")).map(|m| m.uid()).ok();
        self.start_time.is_some() && start_time(pid) == self.start_time && owner == Some(self.uid)
    }
}

/// A caller as policy sees it: the peer plus its executable and that file's
/// SHA-256, each read at most once and only if a client's selectors ask.
pub struct Caller {
    pub peer: Peer,
    exe: std::sync::OnceLock<Option<PathBuf>>,
    sha256: std::sync::OnceLock<Option<String>>,
}

impl Caller {
    pub fn new(peer: Peer) -> Caller {
        Caller { peer, exe: Default::default(), sha256: Default::default() }
    }
}

impl crate::policy::Process for Caller {
    fn uid(&self) -> u32 {
        self.peer.uid
    }

    fn gid(&self) -> u32 {
        self.peer.gid
    }

    fn exe(&self) -> Option<PathBuf> {
        self.exe.get_or_init(|| self.peer.exe()).clone()
    }

    fn exe_sha256(&self) -> Option<String> {
        self.sha256.get_or_init(|| self.peer.exe_sha256()).clone()
    }
}

/// Executables larger than this are not hashed (and so match no hash selector).
const MAX_HASHED_EXE: u64 = 512 * 1024 * 1024;
/// Hashes remembered by (device, inode, mtime, size): a file is hashed once per change.
const HASH_CACHE: usize = 256;

type FileKey = (u64, u64, i64, i64, u64);

static HASHES: std::sync::Mutex<Option<std::collections::HashMap<FileKey, String>>> = std::sync::Mutex::new(None);

impl Peer {
    /// SHA-256 of the file the caller is running (through `/proc/PID/exe`, which
    /// opens the very inode it executes, even if the path was replaced since).
    pub fn exe_sha256(&self) -> Option<String> {
        use std::os::unix::fs::MetadataExt;
        let file = std::fs::File::open(format!("/proc/{}/exe", self.pid?)).ok()?;
        let m = file.metadata().ok()?;
        if m.len() > MAX_HASHED_EXE {
            return None;
        }
        let key = (m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.len());
        let cached = HASHES.lock().unwrap_or_else(|p| p.into_inner()).as_ref().and_then(|c| c.get(&key).cloned());
        let hash = match cached {
            Some(hash) => hash,
            None => {
                let hash = crate::crypto::sha256_reader(std::io::Read::take(&file, MAX_HASHED_EXE)).ok()?;
                let mut cache = HASHES.lock().unwrap_or_else(|p| p.into_inner());
                let cache = cache.get_or_insert_with(Default::default);
                if cache.len() >= HASH_CACHE {
                    cache.clear();
                }
                cache.insert(key, hash.clone());
                hash
            }
        };
        self.still_same_process().then_some(hash)
    }
}

/// Field 22 of `/proc/PID/stat`; the command name before it may hold spaces and
/// parentheses, so fields are counted after the last `)`.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

/// What accept learned about a connection; the server hands it to every request.
#[derive(Debug, Clone)]
pub struct Attestation(pub Option<Peer>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_start_time_is_stable_and_pins_us() {
        let me = std::process::id() as i32;
        let t = start_time(me);
        assert!(t.is_some());
        assert_eq!(start_time(me), t);
        let uid = rustix::process::geteuid().as_raw();
        let peer = Peer { uid, gid: 0, pid: Some(me), start_time: t, pidfd: None };
        assert_eq!(peer.exe(), std::env::current_exe().ok());
        let reused = Peer { start_time: t.map(|t| t + 1), ..peer.clone() };
        assert_eq!(reused.exe(), None, "a pid naming a process that started at another time is not trusted");
        let other_owner = Peer { uid: uid + 1, ..peer.clone() };
        assert_eq!(other_owner.exe(), None);

        let exe = std::fs::File::open(std::env::current_exe().unwrap_or_default()).ok();
        let want = exe.and_then(|f| crate::crypto::sha256_reader(f).ok());
        assert!(want.is_some());
        assert_eq!(peer.exe_sha256(), want);
        assert_eq!(peer.exe_sha256(), want, "from the cache");
        assert_eq!(reused.exe_sha256(), None);
    }
}
