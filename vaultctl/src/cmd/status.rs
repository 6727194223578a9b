//! `vaultctl status`, and the status JSON that `init`, `unlock` and `seal` print too.

use serde::Serialize;
use vault_proto::v1::{StatusRequest, StatusResponse};

use crate::Global;
use crate::daemon::{self, Reply as _};
use crate::output;

pub(crate) async fn run(global: &Global) -> anyhow::Result<()> {
    let mut admin = daemon::admin(global).await?;
    let status = admin.status(StatusRequest {}).await.reply()?;
    if global.json {
        return print_json(&status);
    }
    let mut lines = human(&status);
    // The broker's budgets, when it has some to report (no broker: none).
    if status.initialized && !status.sealed {
        lines.extend(super::budget::over_lines(&super::budget::fetch(global).await?));
    }
    output::lines(&lines)
}

/// `{"initialized","sealed","version","secrets","key_term","schema_version","kdf",
/// "audit_forward_errors","audit_forward_dropped","rotations_due","rotations_failed","compromised","integrity",
/// "exe_attestation"}`,
/// where `kdf` is null until the vault is initialized, else
/// `{"algorithm","memory_kib","iterations","parallelism","insecure_test_profile"}`.
/// The names are the proto's, and a stable contract.
pub(crate) fn print_json(status: &StatusResponse) -> anyhow::Result<()> {
    output::json(&StatusJson::from(status))
}

#[derive(Serialize)]
struct StatusJson<'a> {
    initialized: bool,
    sealed: bool,
    version: &'a str,
    secrets: u64,
    key_term: u32,
    schema_version: u32,
    kdf: Option<KdfJson<'a>>,
    audit_forward_errors: u64,
    audit_forward_dropped: u64,
    /// `env/name` of secrets due (or overdue) for rotation, and whose last rotation failed.
    rotations_due: &'a [String],
    rotations_failed: &'a [String],
    /// `env/name` of secrets whose current version revoke-all marked compromised.
    compromised: &'a [String],
    /// What vaultd found changed behind its back and nobody acknowledged yet.
    integrity: &'a [String],
    /// Whether vaultd can read other users' executables (for --exe selectors).
    exe_attestation: bool,
}

#[derive(Serialize)]
struct KdfJson<'a> {
    algorithm: &'a str,
    memory_kib: u32,
    iterations: u32,
    parallelism: u32,
    insecure_test_profile: bool,
}

impl<'a> From<&'a StatusResponse> for StatusJson<'a> {
    fn from(s: &'a StatusResponse) -> Self {
        StatusJson {
            initialized: s.initialized,
            sealed: s.sealed,
            version: &s.version,
            secrets: s.secrets,
            key_term: s.key_term,
            schema_version: s.schema_version,
            kdf: s.kdf.as_ref().map(|k| KdfJson {
                algorithm: &k.algorithm,
                memory_kib: k.memory_kib,
                iterations: k.iterations,
                parallelism: k.parallelism,
                insecure_test_profile: k.insecure_test_profile,
            }),
            audit_forward_errors: s.audit_forward_errors,
            audit_forward_dropped: s.audit_forward_dropped,
            rotations_due: &s.rotations_due,
            rotations_failed: &s.rotations_failed,
            compromised: &s.compromised,
            integrity: &s.integrity,
            exe_attestation: s.exe_attestation,
        }
    }
}

/// The human form. The secret count and key term are left out while sealed:
/// vaultd reports 0 for both then, which would read as "empty vault".
fn human(s: &StatusResponse) -> Vec<String> {
    let state = match (s.initialized, s.sealed) {
        (false, _) => "not initialized",
        (true, true) => "sealed",
        (true, false) => "unlocked",
    };
    let mut lines = vec![
        format!("state: {state}"),
        format!("vaultd version: {}", s.version),
        format!("schema version: {}", s.schema_version),
    ];
    if s.initialized && !s.sealed {
        lines.push(format!("secrets: {}", s.secrets));
        lines.push(format!("key term: {}", s.key_term));
    }
    if let Some(k) = &s.kdf {
        let warning = if k.insecure_test_profile { " INSECURE TEST PROFILE, see SECURITY.md" } else { "" };
        lines.push(format!(
            "kdf: {} m={} KiB t={} p={}{warning}",
            k.algorithm, k.memory_kib, k.iterations, k.parallelism
        ));
    }
    lines.push(format!("exe attestation: {}", exe_attestation(s)));
    if s.audit_forward_errors > 0 || s.audit_forward_dropped > 0 {
        lines.push(format!(
            "audit forwarding: {} failed attempts, {} entries skipped (see vaultd's log; the audit log itself is complete)",
            s.audit_forward_errors, s.audit_forward_dropped
        ));
    }
    if !s.integrity.is_empty() {
        lines.push(format!(
            "INTEGRITY: {} problems found (changed behind vaultd's back; what they name is not served or acted on); \
             review, then `vaultctl integrity ack`:",
            s.integrity.len()
        ));
        lines.extend(s.integrity.iter().map(|p| format!("  {p}")));
    }
    if !s.compromised.is_empty() {
        lines.push(format!(
            "COMPROMISED, not served until rotated: {} (vaultctl rotate --compromised)",
            s.compromised.join(", ")
        ));
    }
    if !s.rotations_due.is_empty() {
        lines.push(format!("rotation due: {}", s.rotations_due.join(", ")));
    }
    if !s.rotations_failed.is_empty() {
        lines.push(format!("rotation failed: {} (see `vaultctl show NAME`)", s.rotations_failed.join(", ")));
    }
    lines
}

/// Whether executable selectors can match agents of other users.
pub(crate) fn exe_attestation(s: &StatusResponse) -> &'static str {
    match s.exe_attestation {
        true => "available",
        false => {
            "unavailable: vaultd cannot read other users' executables (it needs CAP_SYS_PTRACE; see README \"Executable selectors\")"
        }
    }
}
