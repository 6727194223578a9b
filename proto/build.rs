//! Compiles proto/vault/v1/*.proto with protox (pure Rust), so building needs no protoc.

use prost::Message;

/// Messages that carry a secret value or a passphrase: their Debug is written by
/// hand in lib.rs and prints `[redacted]` instead of the bytes.
const REDACTED: &[&str] = &[
    "vault.v1.GetSecretResponse",
    "vault.v1.InitRequest",
    "vault.v1.UnlockRequest",
    "vault.v1.PutSecretRequest",
    "vault.v1.ShowSecretResponse",
    "vault.v1.HashValueRequest",
    "vault.v1.CreateTokenResponse",
    "vault.v1.RotateSecretRequest",
    "vault.v1.RekeyRequest",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/vault/v1/agent.proto", "proto/vault/v1/admin.proto", "proto/vault/v1/broker.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    // Served by tonic-reflection so generic clients (grpcurl) can discover the API.
    std::fs::write(out.join("vault_descriptor.bin"), fds.encode_to_vec())?;
    // An incident report is stored as JSON (vaultd) and printed as JSON (vaultctl)
    // in the wire's own shape: one type, no copies to keep in step.
    let json = "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]";
    tonic_prost_build::configure()
        .skip_debug(REDACTED.iter().copied())
        .type_attribute(".vault.v1.IncidentReport", json)
        .type_attribute(".vault.v1.HookOutcome", json)
        .compile_fds(fds)?;
    Ok(())
}
