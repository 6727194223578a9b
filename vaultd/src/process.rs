//! Process hardening done once at startup: owner-only file creation, no core
//! dumps, not ptrace-able or dumpable by other processes of the same user.

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
    failed
}
