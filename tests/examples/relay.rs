//! The relay attack on executable selectors (issue 19), for tests/exe_pinning.rs:
//! connect to vaultd's agent socket, hand the connection to a child that keeps
//! it, then exec the pinned program in the process that connected (same pid,
//! same start time). The child relays whoever connects to LISTEN over that
//! connection, so their requests reach vaultd as the connecting process's.
//!
//! `relay AGENT_SOCKET LISTEN -- PROGRAM ARGS...`
#![allow(clippy::unwrap_used)]

use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args[1] == "--pump" {
        return pump(&args[2]);
    }
    let conn = UnixStream::connect(&args[1]).unwrap();
    // vaultd's HTTP/2 side speaks first (SETTINGS): once it has, vaultd has
    // accepted, and attested this program. The bytes stay for the relayed client.
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    rustix::net::recv(&conn, &mut [0u8; 1], rustix::net::RecvFlags::PEEK).unwrap();
    conn.set_read_timeout(None).unwrap();
    let pump = Command::new(std::env::current_exe().unwrap())
        .args(["--pump", &args[2]])
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(conn)))
        .spawn()
        .unwrap();
    drop(pump);
    let err = Command::new(&args[4]).args(&args[5..]).exec();
    panic!("exec {}: {err}", args[4]);
}

/// Relays one client of `listen` over the connection on stdin.
fn pump(listen: &str) {
    let upstream = UnixStream::from(rustix::io::fcntl_dupfd_cloexec(std::io::stdin(), 3).unwrap());
    let listener = UnixListener::bind(listen).unwrap();
    let (client, _) = listener.accept().unwrap();
    let (mut up_read, mut up_write) = (upstream.try_clone().unwrap(), upstream);
    let (mut client_read, mut client_write) = (client.try_clone().unwrap(), client);
    let to_vaultd = std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_read, &mut up_write);
        let _ = up_write.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut up_read, &mut client_write);
    let _ = client_write.shutdown(std::net::Shutdown::Write);
    let _ = to_vaultd.join();
}
