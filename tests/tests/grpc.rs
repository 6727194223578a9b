//! The gRPC surface seen by generic clients: health and reflection on both
//! sockets, each API only on its own socket, and vaultd's own input checks (its
//! callers need not be vaultctl).
//!
//! The tests use a multi-threaded runtime: tonic drives each channel's connection
//! on a background task, which must keep running (and answer vaultd's shutdown
//! handshake) while the `Daemon`'s drop blocks waiting for vaultd to exit.
#![allow(clippy::unwrap_used)]

use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use vault_proto::v1::{self, GetSecretRequest, PutSecretRequest, SecretRef, ShowSecretRequest, StatusRequest};
use vault_tests::Daemon;

async fn channel(socket: &std::path::Path) -> Channel {
    vault_proto::connect(socket).await.unwrap()
}

async fn list_services(channel: Channel) -> Vec<String> {
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut client = ServerReflectionClient::new(channel);
    let mut replies = client.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let reply = replies.message().await.unwrap().expect("one reply");
    match reply.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => list.service.into_iter().map(|s| s.name).collect(),
        other => panic!("unexpected reflection reply: {other:?}"),
    }
}

/// Waits (at most 5 s) until the agent API's health is `want`.
async fn agent_health_becomes(d: &Daemon, want: ServingStatus) {
    let mut health = HealthClient::new(channel(&d.agent_socket).await);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let request = HealthCheckRequest { service: "vault.v1.Agent".into() };
        let status = health.check(request).await.unwrap().into_inner().status;
        if status == want as i32 {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "the agent API's health is {status}, not {want:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_on_both_sockets() {
    let d = Daemon::start();
    // Before init (sealed): the agent API answers NOT_SERVING, the admin API (which
    // unlocks) SERVING; then both SERVING; sealed again, the agent API NOT_SERVING.
    agent_health_becomes(&d, ServingStatus::NotServing).await;
    d.init();
    agent_health_becomes(&d, ServingStatus::Serving).await;
    d.ctl(&["seal"], b"").ok();
    agent_health_becomes(&d, ServingStatus::NotServing).await;
    d.unlock();
    agent_health_becomes(&d, ServingStatus::Serving).await;
    for (socket, api) in [(&d.agent_socket, "vault.v1.Agent"), (&d.admin_socket, "vault.v1.Admin")] {
        let mut health = HealthClient::new(channel(socket).await);
        for service in ["", api] {
            let reply = health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
            assert_eq!(reply.status, ServingStatus::Serving as i32, "{} {service:?}", socket.display());
        }
        let unknown = health.check(HealthCheckRequest { service: "no.such.Service".into() }).await.unwrap_err();
        assert_eq!(unknown.code(), Code::NotFound);

        let services = list_services(channel(socket).await).await;
        for want in [api, "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"] {
            assert!(services.iter().any(|s| s == want), "{}: {want} not in {services:?}", socket.display());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_lists_only_what_each_socket_serves() {
    // A generic client (grpcurl) believes reflection and health: neither may
    // advertise the admin API on the agent socket, or the agent API on the admin one.
    let d = Daemon::start();
    let sockets =
        [(&d.agent_socket, "vault.v1.Agent", "vault.v1.Admin"), (&d.admin_socket, "vault.v1.Admin", "vault.v1.Agent")];
    for (socket, served, other) in sockets {
        let services = list_services(channel(socket).await).await;
        assert!(services.iter().any(|s| s == served), "{}: {services:?}", socket.display());
        assert!(
            !services.iter().any(|s| s == other),
            "{}: reflection lists {other}, not served here: {services:?}",
            socket.display()
        );
        let mut health = HealthClient::new(channel(socket).await);
        let reply = health.check(HealthCheckRequest { service: other.into() }).await;
        let serving = reply.is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32);
        assert!(!serving, "{}: health reports {other} SERVING, but it is not served here", socket.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_api_is_served_only_on_its_own_socket() {
    let d = Daemon::initialized();
    d.put("telegram", b"token");
    // The admin API is not reachable through the agent socket...
    let mut admin_on_agent = vault_proto::admin_client(channel(&d.agent_socket).await);
    let err = admin_on_agent.status(StatusRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    let show = ShowSecretRequest { secret: Some(secret("telegram")), reveal: true, version: 0 };
    let err = admin_on_agent.show_secret(show).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    // ...and agent reads do not go through the admin socket.
    let mut agent_on_admin = vault_proto::agent_client(channel(&d.admin_socket).await);
    let get = GetSecretRequest { env: String::new(), name: "telegram".into(), version: 0 };
    let err = agent_on_admin.get_secret(get.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");

    let mut agent = vault_proto::agent_client(channel(&d.agent_socket).await);
    let reply = agent.get_secret(get).await.unwrap().into_inner();
    assert_eq!((reply.env.as_str(), reply.version, reply.value.as_slice()), ("default", 1, &b"token"[..]));
}

fn secret(name: &str) -> SecretRef {
    SecretRef { env: String::new(), name: name.into() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vaultd_checks_input_itself_and_never_echoes_it() {
    let d = Daemon::initialized();
    let mut admin = vault_proto::admin_client(channel(&d.admin_socket).await);
    let mut agent = vault_proto::agent_client(channel(&d.agent_socket).await);
    let pasted = "sk-ant-PASTED-INTO-NAME-f00d";
    let long = "a".repeat(129);
    for name in ["Bad", "-x", "a/b", long.as_str(), "", pasted, "a\0b"] {
        let put = PutSecretRequest { secret: Some(secret(name)), value: b"v".to_vec(), ..Default::default() };
        let err = admin.put_secret(put).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "put {name:?}: {err:?}");
        assert!(name.len() < 2 || !err.message().contains(name), "put echoes {name:?}: {}", err.message());
        let get = GetSecretRequest { env: String::new(), name: name.into(), version: 0 };
        let err = agent.get_secret(get).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "get {name:?}: {err:?}");
        assert!(name.len() < 2 || !err.message().contains(name), "get echoes {name:?}: {}", err.message());
        let get = GetSecretRequest { env: name.into(), name: "telegram".into(), version: 0 };
        let err = agent.get_secret(get).await.unwrap_err();
        let code = if name.is_empty() { Code::NotFound } else { Code::InvalidArgument };
        assert_eq!(err.code(), code, "env {name:?}: {err:?}");
    }

    let values: [(&str, Vec<u8>, Code); 3] = [
        ("empty", vec![], Code::InvalidArgument),
        ("65536 bytes", vec![7; 65536], Code::Ok),
        ("65537 bytes", vec![7; 65537], Code::InvalidArgument),
    ];
    for (what, value, want) in values {
        let put = PutSecretRequest { secret: Some(secret("sized")), value, ..Default::default() };
        let code = admin.put_secret(put).await.map_or_else(|e| e.code(), |_| Code::Ok);
        assert_eq!(code, want, "{what}");
    }

    let err = admin.put_secret(PutSecretRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "a request without a secret: {err:?}");
    let err = admin.unlock(v1::UnlockRequest { passphrase: vec![] }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "empty passphrase: {err:?}");
    assert!(!d.log().contains(pasted), "the pasted value reached the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_on_a_fresh_vault_report_failed_precondition() {
    let d = Daemon::start();
    let mut admin = vault_proto::admin_client(channel(&d.admin_socket).await);
    let status = admin.status(StatusRequest {}).await.unwrap().into_inner();
    assert!(!status.initialized && status.sealed && status.kdf.is_none(), "{status:?}");
    assert_eq!(status.schema_version, 11);
    let err = admin.init(v1::InitRequest { passphrase: vec![] }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "an empty passphrase: {err:?}");
    let put = PutSecretRequest { secret: Some(secret("x")), value: b"v".to_vec(), ..Default::default() };
    assert_eq!(admin.put_secret(put).await.unwrap_err().code(), Code::FailedPrecondition);
    let init = admin.init(v1::InitRequest { passphrase: b"pass".to_vec() }).await.unwrap().into_inner();
    let status = init.status.unwrap();
    assert!(status.initialized && !status.sealed && status.key_term == 1, "{status:?}");
    assert!(status.kdf.unwrap().insecure_test_profile);
}
