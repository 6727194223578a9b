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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_peer_pidfd_names_the_peer() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap_or_else(|e| panic!("socketpair: {e}"));
        match peer_pidfd(a.as_fd()) {
            // The peer is this process: the pidfd's fdinfo names our pid.
            Ok(fd) => {
                let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).unwrap_or_default();
                assert!(info.lines().any(|l| l == format!("Pid:\t{}", std::process::id())), "{info}");
            }
            Err(e) => eprintln!("skipped: this kernel has no SO_PEERPIDFD ({e})"),
        }
    }
}
