//! The broker's HTTP client: TLS by rustls (on ring, vaultd's crypto) trusting
//! the system's roots plus a route's own CA file, connections pooled per route.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(super) type Body = BoxBody<Bytes, BoxError>;
pub(super) type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>;

/// Idle upstream connections kept per host, and for how long.
const POOL_IDLE: usize = 64;
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The system's trust store (read once, at start).
pub(super) fn system_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!(error = %e, "reading the system's CA certificates");
    }
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    tracing::debug!(added, ignored, "system CA certificates");
    roots
}

/// A pooled HTTPS client trusting `roots` and the certificates in `ca_file`.
pub(super) fn client(
    roots: &rustls::RootCertStore,
    ca_file: Option<&Path>,
    connect: Duration,
) -> Result<HttpsClient, String> {
    let mut roots = roots.clone();
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("ca_file {}: no certificate in it", path.display()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| format!("ca_file {}: {e}", path.display()))?;
        }
    }
    // ring, not aws-lc-rs: vaultd's crypto already, and no C toolchain in the
    // build. rustls deprecates it for lacking post-quantum key exchange.
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(POOL_IDLE)
        .build(https))
}
