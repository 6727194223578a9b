//! Process hardening done once at startup: owner-only file creation, no core
//! dumps, not ptrace-able or dumpable by other processes of the same user, and
//! memory locked out of swap where the limits allow.

/// Applies every hardening step; returns what could not be applied, for a warning.
pub fn harden() -> Vec<String> {
    use rustix::process::{DumpableBehavior, Resource, Rlimit, set_dumpable_behavior, setrlimit, umask};
    // Files, directories and sockets are created owner-only, whatever the caller's umask.
    umask(rustix::fs::Mode::from_raw_mode(0o077));
    let mut failed = Vec::new();
    if let Err(e) = set_dumpable_behavior(DumpableBehavior::NotDumpable) {
        failed.push(format!("prctl(PR_SET_DUMPABLE, 0): {e}"));
    }
    if let Err(e) = setrlimit(Resource::Core, Rlimit { current: Some(0), maximum: Some(0) }) {
        failed.push(format!("setrlimit(RLIMIT_CORE, 0): {e}"));
    }
    // CAP_SYS_PTRACE, when granted for exe selectors (README), arrives as an
    // ambient capability, which every hook would inherit: keep it for vaultd
    // alone. Capabilities are per thread, so this runs before any thread starts.
    if let Err(e) = rustix::thread::clear_ambient_capability_set() {
        failed.push(format!("prctl(PR_CAP_AMBIENT_CLEAR_ALL): {e}"));
    }
    failed
}

/// Takes `name` out of the environment, for a secret that arrives there
/// (`VAULT_TOKEN` in vaultctl): returns its value, and leaves nothing of it in
/// the environment or in what `/proc/PID/environ` shows. Call it first thing in
/// `main`, before any thread starts; with more than one thread it fails.
pub fn take_env(name: &str) -> std::io::Result<Option<std::ffi::OsString>> {
    crate::sys::take_env(name)
}

/// Locks all of vaultd's memory into RAM, so keys, the passphrase and secret values
/// are never written to swap. `Err` says why it did not, for a one-line warning;
/// vaultd runs either way.
///
/// Everything (`mlockall`), not just the pages holding [`crate::crypto::Unlocked`]'s
/// keys: secrets also pass through the passphrase buffer, Argon2's working memory,
/// ring's key schedules, decrypted values and the gRPC buffers that carry them, and
/// only locking the whole process covers those. `MCL_ONFAULT` locks pages as they
/// are touched, so what is locked is the resident set, not every reserved range.
///
/// Only when RLIMIT_MEMLOCK is unlimited or vaultd holds CAP_IPC_LOCK: under
/// `MCL_FUTURE` the kernel charges every new mapping (thread stacks, malloc arenas,
/// Argon2's 64 MiB) at its full size, and refuses one that would pass the limit.
/// A refused allocation aborts the process, so under a finite limit (8 MiB by
/// default) locking would turn "may swap" into "crashes under load".
pub fn lock_memory() -> Result<(), String> {
    use rustix::mm::{MlockAllFlags, mlockall};
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Memlock);
    // Any process may raise its soft limit to the hard one.
    if limit.current != limit.maximum
        && setrlimit(Resource::Memlock, Rlimit { current: limit.maximum, ..limit }).is_ok()
    {
        limit.current = limit.maximum;
    }
    if let Some(bytes) = limit.current
        && !has_ipc_lock()
    {
        return Err(format!(
            "RLIMIT_MEMLOCK is {} KiB; locking needs it unlimited (systemd: LimitMEMLOCK=infinity) or CAP_IPC_LOCK",
            bytes / 1024
        ));
    }
    mlockall(MlockAllFlags::CURRENT | MlockAllFlags::FUTURE | MlockAllFlags::ONFAULT)
        .map_err(|e| format!("mlockall: {e}"))
}

/// Whether CAP_IPC_LOCK is in effect (then RLIMIT_MEMLOCK does not apply).
fn has_ipc_lock() -> bool {
    use rustix::thread::{CapabilitySet, capabilities};
    capabilities(None).is_ok_and(|caps| caps.effective.contains(CapabilitySet::IPC_LOCK))
}
