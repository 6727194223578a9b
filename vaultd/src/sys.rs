//! The only unsafe code in vaultd: system calls that rustix does not wrap.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `SO_PEERPIDFD` (Linux 6.5+): a pidfd for the process at the other end of a
/// unix socket, taken by the kernel at connect time, so it names that process
/// even if it exits and its pid is reused.
const SO_PEERPIDFD: libc::c_int = 77;

/// A pidfd for `socket`'s peer; an error on kernels without SO_PEERPIDFD.
pub(crate) fn peer_pidfd(socket: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let mut pidfd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `socket` is a valid open descriptor for the duration of the call,
    // and the kernel writes at most `len` bytes (one c_int) to `pidfd`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&mut pidfd as *mut libc::c_int).cast::<libc::c_void>(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if pidfd < 0 || len as usize != std::mem::size_of::<libc::c_int>() {
        return Err(io::Error::other("SO_PEERPIDFD returned no descriptor"));
    }
    // SAFETY: on success the kernel created a new descriptor that nothing else
    // owns; wrapping it makes its closing ours.
    Ok(unsafe { OwnedFd::from_raw_fd(pidfd) })
}

/// Resource limits for a hook, applied in the child before it runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChildLimits {
    pub memory_bytes: u64,
    pub cpu_secs: u64,
    pub processes: u64,
}

/// Makes `cmd`'s child confine itself before exec: the limits as hard rlimits (it
/// cannot raise them), no core dumps, and SIGKILL when vaultd dies, so a hook
/// never outlives the daemon that would read its answer.
pub(crate) fn confine_child(cmd: &mut tokio::process::Command, limits: ChildLimits) {
    use rustix::process::{Resource, Rlimit, set_parent_process_death_signal, setrlimit};
    let rlimit = |n: u64| Rlimit { current: Some(n), maximum: Some(n) };
    let confine = move || -> io::Result<()> {
        setrlimit(Resource::As, rlimit(limits.memory_bytes))?;
        setrlimit(Resource::Cpu, rlimit(limits.cpu_secs))?;
        setrlimit(Resource::Nproc, rlimit(limits.processes))?;
        setrlimit(Resource::Core, rlimit(0))?;
        set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
        Ok(())
    };
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe calls are allowed. It makes four setrlimit and one prctl
    // system calls through rustix (direct syscalls: no allocation, no locks) and
    // touches nothing but its captured `Copy` limits.
    unsafe {
        cmd.pre_exec(confine);
    }
}

/// Makes `cmd`'s child run the file open at `file` (checked by the caller)
/// instead of looking up a path: `execveat(file, "", argv, envp, AT_EMPTY_PATH)`,
/// with `argv` just `argv0` and `envp` exactly `env`. Every other descriptor the
/// child holds from vaultd above 2 is made close-on-exec first, so the program
/// starts with its three standard streams only. A script (`#!`) is the one case
/// that keeps one more: the kernel hands its interpreter the script as
/// `/dev/fd/N`, which only works if descriptor N stays open across the exec, so
/// when the kernel refuses a close-on-exec script (ENOENT) the flag is cleared
/// and the exec repeated. Register this after any other `pre_exec` step: on
/// success it does not return.
pub(crate) fn exec_descriptor(
    cmd: &mut tokio::process::Command,
    file: OwnedFd,
    argv0: &str,
    env: &[(&str, String)],
) -> io::Result<()> {
    let exec = Exec::new(file, argv0, env)?;
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe calls are allowed. Everything it passes was allocated
    // before the fork (`Exec::new`); it makes close_range, execveat and fcntl
    // system calls, and builds an `io::Error` from an errno (no allocation).
    unsafe {
        cmd.pre_exec(move || exec.run());
    }
    Ok(())
}

/// The arguments of one `execveat`, laid out before the fork.
struct Exec {
    file: OwnedFd,
    /// Owns the bytes `argv` and `envp` point into.
    _strings: Vec<std::ffi::CString>,
    /// Null-terminated arrays of pointers into `_strings`.
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
}

// SAFETY: the raw pointers point into the heap buffers of `_strings`, owned by
// the same value and never changed or freed while it lives (moving a `CString`
// does not move its bytes); nothing writes through them.
unsafe impl Send for Exec {}
// SAFETY: as above; `run` only reads.
unsafe impl Sync for Exec {}

impl Exec {
    fn new(file: OwnedFd, argv0: &str, env: &[(&str, String)]) -> io::Result<Exec> {
        let c = |s: String| std::ffi::CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
        let mut strings = vec![c(argv0.to_owned())?];
        for (key, value) in env {
            strings.push(c(format!("{key}={value}"))?);
        }
        let pointers = |range: &[std::ffi::CString]| {
            range.iter().map(|s| s.as_ptr()).chain(std::iter::once(std::ptr::null())).collect::<Vec<_>>()
        };
        let (argv, envp) = (pointers(&strings[..1]), pointers(&strings[1..]));
        Ok(Exec { file, _strings: strings, argv, envp })
    }

    /// In the child: returns only if the exec failed.
    fn run(&self) -> io::Result<()> {
        let fd = self.file.as_raw_fd();
        // Raw system calls: glibc wraps these only since 2.34.
        // SAFETY: close_range only changes descriptor flags. Failure (a kernel
        // before 5.11) leaves inherited strays open; vaultd's own are close-on-exec.
        unsafe { libc::syscall(libc::SYS_close_range, 3, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC) };
        let exec = || {
            let (path, argv, envp) = (c"".as_ptr(), self.argv.as_ptr(), self.envp.as_ptr());
            // SAFETY: `fd` is open (owned by `self`); the path is an empty C
            // string; `argv` and `envp` are null-terminated arrays of pointers to
            // C strings that `self` keeps alive. On success this never returns.
            unsafe { libc::syscall(libc::SYS_execveat, fd, path, argv, envp, libc::AT_EMPTY_PATH) };
            io::Error::last_os_error()
        };
        let error = exec();
        if error.raw_os_error() != Some(libc::ENOENT) {
            return Err(error);
        }
        // SAFETY: clears FD_CLOEXEC on a descriptor `self` owns, in this child only.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } != 0 {
            return Err(error);
        }
        Err(exec())
    }
}

/// Takes the variable `name` out of this process's environment and returns its
/// value: the bytes the kernel put there at exec (what `/proc/PID/environ`
/// shows, even after an unsetenv) are overwritten with zeros, then the variable
/// is removed. Refused unless this process has a single thread: changing the
/// environment races with any other thread reading it.
/// Gives the heap's free memory back to the kernel (glibc's `malloc_trim`):
/// after an unlock, the rows read to check the state are freed, but glibc keeps
/// the pages, and the resident size would stay at the load's peak.
pub(crate) fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free pages of the allocator's own heap to
    // the kernel; it takes the allocator's locks and touches no memory in use.
    unsafe {
        libc::malloc_trim(0);
    }
}

pub(crate) fn take_env(name: &str) -> io::Result<Option<std::ffi::OsString>> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    if !status.lines().any(|l| l.strip_prefix("Threads:").is_some_and(|n| n.trim() == "1")) {
        return Err(io::Error::other("the environment can only be changed while the process has one thread"));
    }
    let Some(value) = std::env::var_os(name) else { return Ok(None) };
    let prefix = [name.as_bytes(), b"="].concat();
    // SAFETY: this process has one thread (checked above; only this one could
    // start another, and it does not until this returns), so nothing reads or
    // changes the environment meanwhile. `environ` is a null-terminated array of
    // pointers to writable NUL-terminated strings (the initial ones on the stack,
    // later ones owned by libc); the bytes zeroed lie within one such string,
    // after its `NAME=`, and no Rust reference points into them.
    unsafe {
        let mut entry = libc::environ;
        while !(*entry).is_null() {
            let bytes = std::ffi::CStr::from_ptr(*entry).to_bytes();
            if bytes.starts_with(&prefix) {
                std::ptr::write_bytes((*entry).add(prefix.len()), 0, bytes.len() - prefix.len());
            }
            entry = entry.add(1);
        }
        std::env::remove_var(name);
    }
    Ok(Some(value))
}

/// A file mapped shared and writable: bytes copied into it are in the page
/// cache at once, as after a write(2) (they survive vaultd dying), without a
/// system call per write. The read journal appends through one.
pub(crate) struct MappedFile {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is memory owned by this value alone: writes need `&mut
// self`, and nothing hands out references into it.
unsafe impl Send for MappedFile {}
// SAFETY: as above; `&self` gives no access to the memory at all.
unsafe impl Sync for MappedFile {}

impl MappedFile {
    /// Maps the first `len` bytes of `file`, which must be at least that long.
    pub(crate) fn new(file: &std::fs::File, len: usize) -> io::Result<MappedFile> {
        use rustix::mm::{MapFlags, ProtFlags, mmap};
        if file.metadata()?.len() < len as u64 {
            return Err(io::Error::other("the file is shorter than the mapping"));
        }
        // SAFETY: a new mapping at an address the kernel picks, so it overlaps
        // nothing; `file` is open for reading and writing. The file is vaultd's own
        // (0600, in a 0700 directory) and never shortened while mapped; if another
        // process with the owner's rights shortened it, a write past the new end
        // would fault (SIGBUS) and vaultd would stop: it fails closed, and what
        // the cut removed is the journal-end limit SECURITY.md describes.
        let ptr =
            unsafe { mmap(std::ptr::null_mut(), len, ProtFlags::READ | ProtFlags::WRITE, MapFlags::SHARED, file, 0) }?;
        let ptr = std::ptr::NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(MappedFile { ptr, len })
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Copies `bytes` into the file at `offset`; false (nothing written) if they
    /// do not fit.
    pub(crate) fn write_at(&mut self, offset: usize, bytes: &[u8]) -> bool {
        if offset.checked_add(bytes.len()).is_none_or(|end| end > self.len) {
            return false;
        }
        // SAFETY: [offset, offset + bytes.len()) lies inside the live mapping of
        // `len` bytes (unmapped only on drop), which no Rust reference points into;
        // `bytes` is ordinary memory, so the two cannot overlap.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.as_ptr().add(offset), bytes.len()) };
        true
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once, and no reference
        // into it exists.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn take_env_refuses_a_process_with_threads() {
        // The test harness runs tests on threads of their own.
        let err = take_env("PATH").expect_err("the harness runs tests on threads");
        assert!(err.to_string().contains("one thread"), "{err}");
        assert!(std::env::var_os("PATH").is_some());
    }

    #[test]
    fn a_peer_pidfd_names_the_peer() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap_or_else(|e| panic!("socketpair: {e}"));
        match peer_pidfd(a.as_fd()) {
            // The peer is this process: the pidfd's fdinfo names our pid.
            Ok(fd) => {
                let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).unwrap_or_default();
                assert!(info.lines().any(|l| l == format!("Pid:\t{}", std::process::id())), "{info}");
            }
            // Under CI (Linux 6.5+ there) a missing pidfd is a failure, not a skip.
            Err(e) if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) => panic!("no SO_PEERPIDFD: {e}"),
            Err(e) => eprintln!("skipped: this kernel has no SO_PEERPIDFD ({e})"),
        }
    }
}
