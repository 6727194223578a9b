//! Readiness for systemd (`Type=notify`): one datagram to `$NOTIFY_SOCKET` when both
//! sockets listen (`READY=1`) and one when shutdown begins (`STOPPING=1`).
//!
//! The protocol is a single unix datagram of `KEY=VALUE` lines, so it is written
//! here in a few lines rather than pulled in with libsystemd. `$NOTIFY_SOCKET` is a
//! filesystem path or, starting with `@`, an abstract-namespace address. Outside
//! systemd the variable is unset and nothing is sent.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;

/// The state sent once both sockets listen (and, with `--passphrase-file`, the
/// vault is unlocked): systemd then starts the units ordered after vaultd.
pub const READY: &str = "READY=1";
/// The state sent when shutdown begins, so `systemctl status` says "deactivating".
pub const STOPPING: &str = "STOPPING=1";

/// Sends `state` to `$NOTIFY_SOCKET`, if set. A failure is logged, not returned:
/// vaultd serves either way, and systemd reports a missing `READY=1` itself.
pub fn notify(state: &str) {
    let Some(addr) = std::env::var_os("NOTIFY_SOCKET") else { return };
    match send(&addr, state) {
        Ok(()) => tracing::debug!(state, "notified the service manager"),
        Err(e) => tracing::warn!(state, error = %e, "could not notify the service manager (NOTIFY_SOCKET)"),
    }
}

/// Sends `state` as one datagram to `addr` (a path, or `@name` for the abstract namespace).
pub fn send(addr: &OsStr, state: &str) -> io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    let bytes = addr.as_bytes();
    let sent = match bytes.split_first() {
        Some((b'@', name)) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(state.as_bytes(), &addr)?
        }
        Some((b'/', _)) => socket.send_to(state.as_bytes(), addr)?,
        // systemd also knows `vsock:` addresses (VMs); vaultd runs on the host.
        _ => return Err(io::Error::new(io::ErrorKind::InvalidInput, "not an absolute path or @abstract address")),
    };
    if sent != state.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "the datagram was truncated"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::SocketAddr;

    fn received(socket: &UnixDatagram) -> String {
        socket.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn sends_to_a_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        send(path.as_os_str(), READY).unwrap();
        assert_eq!(received(&socket), "READY=1");
    }

    #[test]
    fn sends_to_an_abstract_address() {
        let name = format!("vaultd-notify-test-{}", std::process::id());
        let socket = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        send(OsStr::new(&format!("@{name}")), STOPPING).unwrap();
        assert_eq!(received(&socket), "STOPPING=1");
    }

    #[test]
    fn refuses_other_addresses() {
        for addr in ["", "relative/notify.sock", "vsock:2:1234"] {
            let err = send(OsStr::new(addr), READY).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{addr:?}");
        }
    }

    #[test]
    fn a_missing_listener_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(send(dir.path().join("nobody-here").as_os_str(), READY).is_err());
    }
}
