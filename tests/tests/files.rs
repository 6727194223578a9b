//! Files and sockets: owner-only modes, data dirs and databases vaultd must
//! refuse, and a clean SIGTERM.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use vault_tests::{Daemon, Options, is_root};

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).mode() & 0o7777
}

#[test]
fn data_dir_files_and_sockets_are_owner_only() {
    let d = Daemon::initialized();
    d.put("telegram", b"token");
    let db = d.data_dir.join("vault.db");
    let cases = [
        (d.data_dir.clone(), 0o700),
        (db.clone(), 0o600),
        (d.data_dir.join("vault.db-wal"), 0o600),
        (d.data_dir.join("vault.db-shm"), 0o600),
        (d.data_dir.join("journal"), 0o700),
        (d.data_dir.join("journal/000000000001.log"), 0o600),
        (d.admin_socket.clone(), 0o600),
        (d.agent_socket.clone(), 0o600),
    ];
    for (path, want) in cases {
        assert_eq!(mode(&path), want, "{}: mode {:04o}", path.display(), mode(&path));
    }
    let me = rustix::process::geteuid().as_raw();
    assert_eq!(fs::metadata(&db).unwrap().uid(), me);
    // Nothing else appears in the data dir.
    let mut names: Vec<_> = fs::read_dir(&d.data_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert_eq!(names, ["journal", "vault.db", "vault.db-shm", "vault.db-wal", "vaultd.lock"]);
    assert_eq!(mode(&d.data_dir.join("vaultd.lock")), 0o600, "the data dir's lock");
}

#[test]
fn files_are_owner_only_even_with_a_permissive_umask() {
    let d = Daemon::start_with(Options { umask: Some(0o000), ..Options::default() });
    d.init();
    d.put("telegram", b"token");
    let paths = [
        &d.data_dir,
        &d.data_dir.join("vault.db"),
        &d.data_dir.join("vault.db-wal"),
        &d.data_dir.join("vault.db-shm"),
        &d.data_dir.join("journal"),
        &d.data_dir.join("journal/000000000001.log"),
        &d.admin_socket,
        &d.agent_socket,
    ];
    let modes = paths.map(|p| format!("{:04o}", mode(p)));
    assert_eq!(modes, ["0700", "0600", "0600", "0600", "0700", "0600", "0600", "0600"], "{paths:?}");
}

#[test]
fn agent_socket_mode_comes_from_the_config() {
    // A group the daemon may give the socket: its own (any gid when root).
    let gid = if vault_tests::is_root() { 4242 } else { rustix::process::getegid().as_raw() };
    let config = format!("agent_socket_mode = \"0660\"\nagent_socket_gid = {gid}\n");
    let d = Daemon::start_with(Options { config: Some(config), ..Options::default() });
    assert_eq!(mode(&d.agent_socket), 0o660);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&d.agent_socket).unwrap().gid(), gid, "the agent socket's group");
    assert_eq!(mode(&d.admin_socket), 0o600, "the admin socket is always owner-only");
}

#[test]
fn refuses_unsafe_data_dirs_and_newer_databases() {
    type Setup = fn(&Daemon);
    let cases: [(&str, Setup, &str); 5] = [
        ("data dir 0755", |d| make_dir(&d.data_dir, 0o755), "mode 0755"),
        ("data dir 0750", |d| make_dir(&d.data_dir, 0o750), "mode 0750"),
        ("data dir 0701", |d| make_dir(&d.data_dir, 0o701), "mode 0701"),
        ("vault.db 0644", |d| make_db(d, 0o644, 0), "mode 0644"),
        ("schema from the future", |d| make_db(d, 0o600, 99), "newer"),
    ];
    for (what, setup, want) in cases {
        let mut d = Daemon::new(Options::default());
        setup(&d);
        let stopped = d.launch_expecting_exit();
        assert_eq!(stopped.status.code(), Some(1), "{what}: {}", stopped.log);
        let last = stopped.log.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("vaultd: ") && last.contains(want),
            "{what}: last line {last:?}; log:\n{}",
            stopped.log
        );
        assert!(!d.admin_socket.exists() && !d.agent_socket.exists(), "{what}: no socket may be bound");
    }
}

fn make_dir(path: &Path, mode: u32) {
    fs::create_dir(path).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A data dir holding an SQLite file with `user_version` set, and the file's mode.
fn make_db(d: &Daemon, mode: u32, user_version: u32) {
    make_dir(&d.data_dir, 0o700);
    let db = d.data_dir.join("vault.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.pragma_update(None, "user_version", user_version).unwrap();
    drop(conn);
    fs::set_permissions(&db, fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn refuses_a_database_written_by_a_newer_vaultd() {
    let mut d = Daemon::initialized();
    d.put("telegram", b"token");
    d.stop();
    d.db().pragma_update(None, "user_version", 99).unwrap();
    let stopped = d.launch_expecting_exit();
    assert_eq!(stopped.status.code(), Some(1), "{}", stopped.log);
    assert!(stopped.log.contains("newer"), "{}", stopped.log);
    let version: u32 = d.db().query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, 99, "the refused database is left as it was");
}

#[test]
fn refuses_a_data_dir_owned_by_another_user() {
    if !is_root() {
        vault_tests::skip_unless_ci("needs root (run as root, as CI does)");
        return;
    }
    let mut d = Daemon::new(Options::default());
    make_dir(&d.data_dir, 0o700);
    rustix::fs::chown(&d.data_dir, Some(rustix::process::Uid::from_raw(65534)), None).unwrap();
    let stopped = d.launch_expecting_exit();
    assert_eq!(stopped.status.code(), Some(1), "{}", stopped.log);
    assert!(stopped.log.contains("owned by uid 65534"), "{}", stopped.log);
}

#[test]
fn sigterm_stops_cleanly_and_removes_both_sockets() {
    let mut d = Daemon::initialized();
    d.put("telegram", b"token");
    assert!(d.agent_socket.exists() && d.admin_socket.exists());
    let stopped = d.stop();
    assert_eq!(stopped.status.code(), Some(0), "{}", stopped.log);
    assert!(!d.agent_socket.exists(), "agent socket left behind");
    assert!(!d.admin_socket.exists(), "admin socket left behind");
    // SIGINT (Ctrl-C in a terminal) does the same.
    d.launch();
    let stopped = d.stop_with(rustix::process::Signal::INT);
    assert_eq!(stopped.status.code(), Some(0), "{}", stopped.log);
    assert!(!d.agent_socket.exists() && !d.admin_socket.exists());
}

#[test]
fn sigterm_is_not_held_up_by_an_idle_connection() {
    // A client that connects and then says nothing (a hung agent, a stopped
    // process) must not keep vaultd — and its keys — alive after SIGTERM.
    let mut d = Daemon::initialized();
    let _idle_agent = std::os::unix::net::UnixStream::connect(&d.agent_socket).unwrap();
    let _idle_admin = std::os::unix::net::UnixStream::connect(&d.admin_socket).unwrap();
    d.status(); // the idle connections have been accepted by now
    let grace = std::time::Duration::from_secs(10);
    match d.try_stop(rustix::process::Signal::TERM, grace) {
        Ok(stopped) => assert!(stopped.status.success(), "{}", stopped.log),
        Err(stopped) => panic!("vaultd was still running {grace:?} after SIGTERM (killed); log:\n{}", stopped.log),
    }
    assert!(!d.agent_socket.exists() && !d.admin_socket.exists());
}

#[test]
fn a_stale_socket_file_is_replaced_and_a_live_one_refused() {
    let mut d = Daemon::initialized();
    // A second vaultd on the same sockets must not steal them from the first.
    let mut second = Daemon::new(Options::default());
    second.agent_socket = d.agent_socket.clone();
    second.admin_socket = d.admin_socket.clone();
    let stopped = second.launch_expecting_exit();
    assert_eq!(stopped.status.code(), Some(1), "{}", stopped.log);
    assert!(stopped.log.contains("another vaultd"), "{}", stopped.log);
    d.status();

    // After a crash (SIGKILL) the socket files remain; a restart replaces them.
    d.kill();
    assert!(d.admin_socket.exists(), "SIGKILL leaves the socket file");
    d.launch();
    d.unlock();
    d.status();
}

#[test]
fn the_process_is_hardened() {
    // umask 077 and no core dumps (a core file would hold the keys).
    let d = Daemon::initialized();
    let pid = d.pid();
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.lines().any(|l| l == "Umask:\t0077"), "{status}");
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits.lines().find(|l| l.starts_with("Max core file size")).unwrap();
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(fields[4..6], ["0", "0"], "soft and hard core limits: {core}");
}
