//! Who is calling: the peer's credentials as the kernel reports them at accept
//! (SO_PEERCRED), and what accept learns about the process behind them: a pidfd
//! (SO_PEERPIDFD), its start time, and what it runs (the executable's device and
//! inode, its mount and user namespaces). Later, an executable selector matches
//! only while the pid still names that process and it still runs that file in
//! those namespaces. Never anything the caller says about itself (argv, comm,
//! environment).

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use tokio::net::UnixStream;

/// A connected peer's kernel-attested credentials.
#[derive(Debug, Clone)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
    /// What accept learned about the process behind `pid`.
    pub accepted: Option<Arc<Accepted>>,
}

/// The process behind a peer's pid, as accept found it.
#[derive(Debug)]
pub struct Accepted {
    /// Its start time (clock ticks since boot).
    start_time: Option<u64>,
    /// A pidfd for it, where the kernel gives one: the surest way to know the
    /// pid still names it.
    pidfd: Option<OwnedFd>,
    /// What it ran, or why that could not be told.
    exe: Result<Exe, Unattested>,
}

/// What a process runs: its executable file and its mount and user namespaces,
/// each as (device, inode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exe {
    file: (u64, u64),
    mount_ns: (u64, u64),
    user_ns: (u64, u64),
}

/// Why a caller's executable cannot be vouched for; such a caller matches no
/// executable selector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unattested {
    /// The kernel gave no pid (the peer is in another pid namespace).
    NoPid,
    /// `/proc/PID/exe` could not be read: another user's process while vaultd
    /// lacks CAP_SYS_PTRACE (see [`exe_attestation`]), or it exited.
    Unreadable,
    /// The pid no longer names the process that connected.
    Gone,
    /// It runs another file, or in other namespaces, than when it connected: it
    /// exec'd since (and the connection may be in anyone's hands).
    Changed,
    /// Its user namespace is not vaultd's, so it may have mounted what it liked.
    OtherUserNamespace,
    /// Larger than vaultd hashes.
    TooLarge,
}

impl Unattested {
    /// For the audit log's reason.
    pub fn reason(self) -> &'static str {
        match self {
            Unattested::NoPid => "executable unknown: no pid",
            Unattested::Unreadable => "executable unreadable",
            Unattested::Gone => "process gone",
            Unattested::Changed => "executable changed since connect",
            Unattested::OtherUserNamespace => "executable in another user namespace",
            Unattested::TooLarge => "executable too large to hash",
        }
    }
}

/// Whether vaultd can read the executables of other users' processes: that
/// takes ptrace access (PTRACE_MODE_READ), which CAP_SYS_PTRACE gives (root has
/// it). Without it, executable selectors match no agent of another uid; README
/// "Executable selectors" says how to grant it. Read once, at the first call.
pub fn exe_attestation() -> bool {
    static ABLE: OnceLock<bool> = OnceLock::new();
    *ABLE.get_or_init(|| {
        use rustix::thread::{CapabilitySet, capabilities};
        capabilities(None).is_ok_and(|caps| caps.effective.contains(CapabilitySet::SYS_PTRACE))
    })
}

impl Peer {
    pub(crate) fn of_stream(stream: &UnixStream) -> Option<Peer> {
        let cred = stream.peer_cred().ok()?;
        let pid = cred.pid();
        let pidfd = crate::sys::peer_pidfd(std::os::fd::AsFd::as_fd(stream)).ok();
        let accepted = pid.map(|pid| Arc::new(Accepted::read(pid, cred.uid(), pidfd)));
        Some(Peer { uid: cred.uid(), gid: cred.gid(), pid, accepted })
    }

    /// The peer of the connection a request arrived on, as read at accept;
    /// `None` when the kernel gave no credentials, which callers treat as a denial.
    pub fn of_request<T>(req: &tonic::Request<T>) -> Option<Peer> {
        req.extensions().get::<Attestation>()?.0.clone()
    }

    /// What the caller runs, if it is what it ran when it connected and the pid
    /// still names that process.
    pub fn exe(&self) -> Result<Exe, Unattested> {
        let (Some(pid), Some(accepted)) = (self.pid, &self.accepted) else { return Err(Unattested::NoPid) };
        let then = accepted.exe?;
        let now = accepted.exe_now(pid, self.uid)?;
        if now != then {
            return Err(Unattested::Changed);
        }
        Ok(now)
    }

    /// SHA-256 of `exe`, which this caller runs: the file is opened through
    /// `/proc/PID/exe` (the very inode it executes, even if its path was
    /// replaced since) and must be that inode.
    fn sha256(&self, exe: Exe) -> Result<String, Unattested> {
        let (Some(pid), Some(accepted)) = (self.pid, &self.accepted) else { return Err(Unattested::NoPid) };
        let file = std::fs::File::open(format!("/proc/{pid}/exe")).map_err(|_| Unattested::Unreadable)?;
        let key = HashKey::of(&file)?;
        if (key.dev, key.ino) != exe.file {
            return Err(Unattested::Changed);
        }
        if key.size > MAX_HASHED_EXE {
            return Err(Unattested::TooLarge);
        }
        let cached = HASHES.lock().unwrap_or_else(|p| p.into_inner()).as_ref().and_then(|c| c.get(&key).cloned());
        let hash = match cached {
            Some(hash) => hash,
            None => {
                let hash = crate::crypto::sha256_reader(io::Read::take(&file, MAX_HASHED_EXE))
                    .map_err(|_| Unattested::Unreadable)?;
                // Written to while being read: what was hashed is no file at all.
                if HashKey::of(&file)? != key {
                    return Err(Unattested::Changed);
                }
                let mut cache = HASHES.lock().unwrap_or_else(|p| p.into_inner());
                let cache = cache.get_or_insert_with(Default::default);
                if cache.len() >= HASH_CACHE {
                    cache.clear();
                }
                cache.insert(key, hash.clone());
                hash
            }
        };
        if !accepted.still_same_process(pid, self.uid) {
            return Err(Unattested::Gone);
        }
        Ok(hash)
    }
}

impl Exe {
    /// Whether this is the file `path` names now (the same device and inode):
    /// the path as vaultd sees it, whatever the caller's mount namespace calls
    /// it.
    pub fn is(&self, path: &Path) -> bool {
        std::fs::metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == self.file)
    }

    /// `pid`'s, read through `/proc`.
    fn of(pid: i32) -> Result<Exe, Unattested> {
        let id = |what: &str| {
            let meta = std::fs::metadata(format!("/proc/{pid}/{what}")).map_err(|_| Unattested::Unreadable)?;
            Ok((meta.dev(), meta.ino()))
        };
        Ok(Exe { file: id("exe")?, mount_ns: id("ns/mnt")?, user_ns: id("ns/user")? })
    }
}

/// vaultd's own user namespace, as (device, inode).
fn own_user_ns() -> Option<(u64, u64)> {
    static OWN: OnceLock<Option<(u64, u64)>> = OnceLock::new();
    *OWN.get_or_init(|| std::fs::metadata("/proc/self/ns/user").ok().map(|m| (m.dev(), m.ino())))
}

impl Accepted {
    fn read(pid: i32, uid: u32, pidfd: Option<OwnedFd>) -> Accepted {
        let mut accepted = Accepted { start_time: start_time(pid), pidfd, exe: Err(Unattested::Gone) };
        accepted.exe = accepted.exe_now(pid, uid);
        accepted
    }

    /// What `pid` runs now, if it is still this process and in vaultd's user
    /// namespace.
    fn exe_now(&self, pid: i32, uid: u32) -> Result<Exe, Unattested> {
        let exe = Exe::of(pid);
        if !self.still_same_process(pid, uid) {
            return Err(Unattested::Gone);
        }
        let exe = exe?;
        if Some(exe.user_ns) != own_user_ns() {
            return Err(Unattested::OtherUserNamespace);
        }
        Ok(exe)
    }

    /// Checked after reading `/proc/PID/…`: the pidfd (where the kernel gave one)
    /// still names a live process with this pid; and, as SPIRE does, the pid has
    /// the start time it had at accept and the same effective uid (from
    /// `status`: the owner of `/proc/PID` reads as root for a non-dumpable
    /// process such as vaultctl).
    fn still_same_process(&self, pid: i32, uid: u32) -> bool {
        use std::os::fd::AsRawFd;
        if let Some(pidfd) = &self.pidfd {
            let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd())).unwrap_or_default();
            if !info.lines().any(|l| l.strip_prefix("Pid:").is_some_and(|p| p.trim() == pid.to_string())) {
                return false; // exited (Pid: -1), so the pid may name another process now
            }
        }
        self.start_time.is_some() && start_time(pid) == self.start_time && effective_uid(pid) == Some(uid)
    }
}

/// What policy may ask about a caller (identity's answer is [`Caller`]). What it
/// runs is read only when a client's selectors ask, and an `Err` says why it
/// could not be told. Defined here, so identity does not depend on policy.
pub trait Process {
    fn uid(&self) -> u32;
    fn gid(&self) -> u32;
    /// Whether the caller runs the file `path` names (the same file, not the same string).
    fn runs(&self, path: &Path) -> Result<bool, Unattested>;
    fn exe_sha256(&self) -> Result<String, Unattested>;
}

/// A caller as policy sees it: the peer, with what it runs and that file's
/// SHA-256 each read at most once per request, and only if a client's selectors
/// ask.
pub struct Caller {
    pub peer: Peer,
    exe: OnceLock<Result<Exe, Unattested>>,
    sha256: OnceLock<Result<String, Unattested>>,
}

impl Caller {
    pub fn new(peer: Peer) -> Caller {
        Caller { peer, exe: Default::default(), sha256: Default::default() }
    }

    fn exe(&self) -> Result<Exe, Unattested> {
        *self.exe.get_or_init(|| self.peer.exe())
    }
}

impl Process for Caller {
    fn uid(&self) -> u32 {
        self.peer.uid
    }

    fn gid(&self) -> u32 {
        self.peer.gid
    }

    fn runs(&self, path: &Path) -> Result<bool, Unattested> {
        Ok(self.exe()?.is(path))
    }

    fn exe_sha256(&self) -> Result<String, Unattested> {
        self.sha256.get_or_init(|| self.exe().and_then(|exe| self.peer.sha256(exe))).clone()
    }
}

/// Executables larger than this are not hashed (and so match no hash selector).
const MAX_HASHED_EXE: u64 = 512 * 1024 * 1024;
/// Hashes remembered by [`HashKey`]: a file is hashed once per change.
const HASH_CACHE: usize = 256;

/// A file's contents as far as the kernel vouches for them: device, inode, size
/// and change time to the nanosecond. Unlike the mtime, nobody but root can set
/// the ctime: any write or `touch` moves it to now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct HashKey {
    dev: u64,
    ino: u64,
    ctime: (i64, i64),
    size: u64,
}

impl HashKey {
    fn of(file: &std::fs::File) -> Result<HashKey, Unattested> {
        let m = file.metadata().map_err(|_| Unattested::Unreadable)?;
        Ok(HashKey { dev: m.dev(), ino: m.ino(), ctime: (m.ctime(), m.ctime_nsec()), size: m.len() })
    }
}

static HASHES: std::sync::Mutex<Option<std::collections::HashMap<HashKey, String>>> = std::sync::Mutex::new(None);

/// The second field of `Uid:` in `/proc/PID/status`.
fn effective_uid(pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_whitespace().nth(1)?.parse().ok()
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
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn me() -> Peer {
        let pid = std::process::id() as i32;
        let uid = rustix::process::geteuid().as_raw();
        Peer { uid, gid: 0, pid: Some(pid), accepted: Some(Arc::new(Accepted::read(pid, uid, None))) }
    }

    #[test]
    fn our_own_process_is_attested_and_a_reused_pid_is_not() {
        let me = me();
        let exe = std::env::current_exe().unwrap();
        assert!(me.exe().unwrap().is(&exe));
        assert!(!me.exe().unwrap().is(Path::new("/bin/sh")));
        let want = crate::crypto::sha256_reader(std::fs::File::open(&exe).unwrap()).unwrap();
        let caller = Caller::new(me.clone());
        assert_eq!(caller.exe_sha256(), Ok(want.clone()));
        assert_eq!(Caller::new(me.clone()).exe_sha256(), Ok(want), "from the cache");
        assert_eq!(caller.runs(&exe), Ok(true));

        let accepted = me.accepted.as_ref().unwrap();
        let start_time = accepted.start_time.map(|t| t + 1);
        let reused = Accepted { start_time, pidfd: None, exe: accepted.exe };
        let reused = Peer { accepted: Some(Arc::new(reused)), ..me.clone() };
        assert_eq!(reused.exe(), Err(Unattested::Gone), "a pid naming a process that started at another time");
        assert_eq!(Peer { uid: me.uid + 1, ..me.clone() }.exe(), Err(Unattested::Gone), "another owner");
        assert_eq!(Peer { pid: None, ..me.clone() }.exe(), Err(Unattested::NoPid));
    }

    #[test]
    fn a_process_that_ran_another_file_at_accept_has_changed() {
        let me = me();
        let accepted = me.accepted.as_ref().unwrap();
        let mut exe = accepted.exe.unwrap();
        exe.file.1 += 1;
        let before = Accepted { start_time: accepted.start_time, pidfd: None, exe: Ok(exe) };
        let execd = Peer { accepted: Some(Arc::new(before)), ..me.clone() };
        assert_eq!(execd.exe(), Err(Unattested::Changed));
        assert_eq!(Caller::new(execd).exe_sha256(), Err(Unattested::Changed));
    }
}
