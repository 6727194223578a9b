//! The authorization table: every RPC of `vault.v1.Agent` and `vault.v1.Admin`,
//! and a use through the credential broker, called by every kind of caller
//! (a `use` grant among them), each as a real process with a real uid, and
//! each cell's status asserted.
//!
//! The calls are made by a child process: this test binary, copied to a 0755 temp
//! dir and re-executed (with `.uid(U).gid(U)`) running only [`authz_child`], which
//! performs one row's calls and prints one result line per call. Both sockets are
//! reachable by everyone on the filesystem (the agent socket 0666 by config, the
//! admin socket chmod 0666 as a mistaken mode would), so what is tested is vaultd's
//! own per-request check. Needs root (CI is root) to run as other uids; the uids
//! are plain numbers (no passwd entry is needed to run as one).
//!
//! Admin requests are valid ones that would succeed if admitted (the right
//! passphrase, existing objects), on throwaway objects of the row's own, so a
//! bypass shows as OK instead of hiding behind an error, and cannot disturb other
//! cells. Afterwards the vault is checked for side effects of the denied calls.
#![allow(clippy::unwrap_used)]

mod upstream;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status, Streaming};
use vault_proto::v1::admin_client::AdminClient;
use vault_proto::v1::agent_client::AgentClient;
use vault_proto::v1::{self, AuditFilter, SecretRef};
use vault_tests::{Daemon, Options, PASSPHRASE, is_root};

/// Set (to a JSON spec) only in the child: which calls to make, as whom.
const CHILD_ENV: &str = "VAULT_E2E_AUTHZ_CHILD";
/// Prefix of the child's result lines (libtest prints its own lines too).
const MARK: &str = "authz-result ";
/// The one call per cell: the agent reads first, then the admin calls in proto
/// order, except that Seal and Unlock go last (in that order) so that a seal,
/// whoever manages it, is undone before the next row.
const AGENT_CALLS: [&str; 5] = ["GetSecret", "GetSecrets", "WatchSecrets", "GetSecret missing", "ListGranted"];
/// A brokered use of the secret: an HTTP request on the credential broker's
/// unix socket (its status shown as the gRPC code of the same meaning).
const BROKER_CALLS: [&str; 1] = ["Use (broker)"];
const ADMIN_CALLS: [&str; 34] = vault_tests::ADMIN_RPCS;
/// How long one call (or a stream's first message) may take in the child.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Owner,
    Granted,
    NoGrant,
    Disabled,
    OtherUid,
    WrongExe,
    TokenValid,
    TokenExpired,
    TokenRevoked,
    TokenWrongUid,
    TokenOnlyBare,
    TokenOnlyToken,
    UseOnly,
}

impl Kind {
    const ALL: [Kind; 13] = [
        Kind::Owner,
        Kind::Granted,
        Kind::NoGrant,
        Kind::Disabled,
        Kind::OtherUid,
        Kind::WrongExe,
        Kind::TokenValid,
        Kind::TokenExpired,
        Kind::TokenRevoked,
        Kind::TokenWrongUid,
        Kind::TokenOnlyBare,
        Kind::TokenOnlyToken,
        Kind::UseOnly,
    ];

    /// (label, tag naming its throwaway objects, uid; `None`: the owner, root)
    fn who(self) -> (&'static str, &'static str, Option<u32>) {
        match self {
            Kind::Owner => ("owner", "owner", None),
            Kind::Granted => ("granted client", "granted", Some(65534)),
            Kind::NoGrant => ("client without the grant", "nogrant", Some(65533)),
            Kind::Disabled => ("disabled client", "disabled", Some(65532)),
            Kind::OtherUid => ("other uid, no client", "otheruid", Some(65531)),
            Kind::WrongExe => ("wrong executable", "wrongexe", Some(65530)),
            Kind::TokenValid => ("valid token", "tokvalid", Some(65529)),
            Kind::TokenExpired => ("expired token", "tokexpired", Some(65527)),
            Kind::TokenRevoked => ("revoked token", "tokrevoked", Some(65526)),
            // The valid token (bound to 65529), presented by 65528.
            Kind::TokenWrongUid => ("token from the wrong uid", "tokwronguid", Some(65528)),
            // A uid two containers share: one's client is token-only, the other's
            // is not; without a token the uid matches neither.
            Kind::TokenOnlyBare => ("shared uid, no token", "tokonlybare", Some(65525)),
            Kind::TokenOnlyToken => ("shared uid, its token", "tokonlytok", Some(65525)),
            // A `use` grant: the broker may use the secret for it; it may not read it.
            Kind::UseOnly => ("use grant, no read", "useonly", Some(65524)),
        }
    }

    fn label(self) -> &'static str {
        self.who().0
    }

    fn tag(self) -> &'static str {
        self.who().1
    }

    fn bad_token(self) -> bool {
        matches!(self, Kind::TokenExpired | Kind::TokenRevoked | Kind::TokenWrongUid)
    }

    /// The expected status of `call` by this kind of caller.
    fn want(self, call: &str) -> Code {
        let reads = matches!(self, Kind::Owner | Kind::Granted | Kind::TokenValid | Kind::TokenOnlyToken);
        match call {
            // A token vaultd knows but no longer honours pauses nothing (only a
            // guess does): each of its calls is refused for what it is.
            _ if self.bad_token() && (AGENT_CALLS.contains(&call) || BROKER_CALLS.contains(&call)) => {
                Code::Unauthenticated
            }
            "Use (broker)" if reads || self == Kind::UseOnly => Code::Ok,
            "Use (broker)" => Code::NotFound, // indistinguishable from no such route
            "GetSecret missing" => Code::NotFound,
            // Names only, and only those granted: an empty list for a caller without grants.
            "ListGranted" => Code::Ok,
            "GetSecret" | "GetSecrets" | "WatchSecrets" if reads => Code::Ok,
            "GetSecret" | "GetSecrets" | "WatchSecrets" => Code::NotFound, // indistinguishable from missing
            _ if self != Kind::Owner => Code::PermissionDenied,
            "Init" => Code::AlreadyExists,
            // The owner's RevokeAll has no reason: refused before it changes anything.
            "RevokeAll" => Code::InvalidArgument,
            "ShowIncident" => Code::NotFound,
            _ => Code::Ok,
        }
    }
}

/// The calls in the order a child makes them.
fn call_order() -> Vec<&'static str> {
    let mut calls: Vec<&str> = AGENT_CALLS.iter().chain(&BROKER_CALLS).copied().collect();
    calls.extend(ADMIN_CALLS.iter().filter(|c| !matches!(**c, "Seal" | "Unlock")));
    calls.extend(["Seal", "Unlock"]);
    calls
}

fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A short form for the printed matrix.
fn short(code: &str) -> &str {
    match code {
        "PERMISSION_DENIED" => "PD",
        "NOT_FOUND" => "NF",
        "UNAUTHENTICATED" => "UA",
        "ALREADY_EXISTS" => "AE",
        "RESOURCE_EXHAUSTED" => "RE",
        other => other,
    }
}

fn secret_ref(env: &str, name: &str) -> Option<SecretRef> {
    Some(SecretRef { env: env.into(), name: name.into() })
}

// ---------------------------------------------------------------- the child

/// Not a test of its own: the body of the child process, which does nothing
/// unless [`CHILD_ENV`] is set.
#[test]
fn authz_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else { return };
    let spec: serde_json::Value = serde_json::from_str(&spec).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(child(&spec));
}

struct Caller {
    agent: AgentClient<Channel>,
    admin: AdminClient<Channel>,
    token: Option<String>,
    tag: String,
    passphrase: Vec<u8>,
    accessor: String,
    /// The broker's unix socket.
    broker: String,
}

async fn child(spec: &serde_json::Value) {
    let text = |key: &str| spec[key].as_str().unwrap_or_default().to_owned();
    let mut caller = Caller {
        agent: vault_proto::agent_client(vault_proto::connect(text("agent")).await.unwrap()),
        admin: vault_proto::admin_client(vault_proto::connect(text("admin")).await.unwrap()),
        token: spec["token"].as_str().map(str::to_owned),
        tag: text("tag"),
        passphrase: text("passphrase").into_bytes(),
        accessor: text("accessor"),
        broker: text("broker"),
    };
    for call in spec["calls"].as_array().unwrap() {
        let call = call.as_str().unwrap();
        let result = match tokio::time::timeout(CALL_TIMEOUT, caller.call(call)).await {
            Ok(result) => result,
            Err(_) => Err(Status::deadline_exceeded(format!("no answer within {CALL_TIMEOUT:?}"))),
        };
        let (code, message) =
            result.map_or_else(|s| (s.code(), s.message().to_owned()), |()| (Code::Ok, String::new()));
        println!("{MARK}{}", serde_json::json!({ "call": call, "code": code_name(code), "message": message }));
    }
}

/// `msg` with `authorization: Bearer TOKEN` when the caller has a token.
fn request<T>(token: Option<&str>, msg: T) -> Request<T> {
    let mut req = Request::new(msg);
    if let Some(token) = token {
        req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    req
}

/// A server stream counts as answered by its call or its first message,
/// whichever carries the status (a denial may come on either).
async fn first_message<T>(opened: Result<Response<Streaming<T>>, Status>) -> Result<(), Status> {
    let mut stream = opened?.into_inner();
    match tokio::time::timeout(CALL_TIMEOUT, stream.message()).await {
        Ok(message) => message.map(drop),
        Err(_) => Err(Status::deadline_exceeded("the stream opened but sent nothing")),
    }
}

/// A request through the broker's `use` route (to prod/telegram) with the
/// caller's token, if any: its HTTP status as the gRPC code that means the same.
fn brokered_use(socket: &str, token: Option<&str>) -> Result<(), Status> {
    use std::io::{Read, Write};
    let mut conn = std::os::unix::net::UnixStream::connect(socket).map_err(|e| Status::unavailable(e.to_string()))?;
    conn.set_read_timeout(Some(CALL_TIMEOUT)).unwrap();
    let body = r#"{"model":"m","max_tokens":8,"messages":[]}"#;
    let key = token.map(|t| format!("x-api-key: {t}\r\n")).unwrap_or_default();
    let request = format!(
        "POST /use/v1/messages HTTP/1.1\r\nhost: broker\r\nconnection: close\r\n{key}content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(request.as_bytes()).map_err(|e| Status::unavailable(e.to_string()))?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply).map_err(|e| Status::unavailable(e.to_string()))?;
    let status: u16 = reply.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let message = reply.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    match status {
        200 => Ok(()),
        401 => Err(Status::unauthenticated(message)),
        403 => Err(Status::permission_denied(message)),
        404 => Err(Status::not_found(message)),
        429 => Err(Status::resource_exhausted(message)),
        _ => Err(Status::unknown(format!("HTTP {status}: {message}"))),
    }
}

/// A unary call's status, its reply dropped.
fn done<T>(reply: Result<T, Status>) -> Result<(), Status> {
    reply.map(drop)
}

impl Caller {
    async fn call(&mut self, call: &str) -> Result<(), Status> {
        let t = self.token.as_deref();
        let tag = self.tag.as_str();
        let (agent, admin) = (&mut self.agent, &mut self.admin);
        let get = |name: &str| v1::GetSecretRequest { env: "prod".into(), name: name.into(), version: 0 };
        let scratch = format!("scratch-{tag}");
        let pattern = vec!["scratch/granted".to_owned()];
        let filter = |limit| Some(AuditFilter { limit, ..AuditFilter::default() });
        let passphrase = self.passphrase.clone();
        match call {
            "GetSecret" => done(agent.get_secret(request(t, get("telegram"))).await),
            "GetSecret missing" => done(agent.get_secret(request(t, get("nosuch"))).await),
            "GetSecrets" => {
                let names = vec!["telegram".to_owned()];
                done(agent.get_secrets(request(t, v1::GetSecretsRequest { env: "prod".into(), names })).await)
            }
            "WatchSecrets" => {
                let names = vec!["telegram".to_owned()];
                let watch = v1::GetSecretsRequest { env: "prod".into(), names };
                first_message(agent.watch_secrets(request(t, watch)).await).await
            }
            "ListGranted" => done(agent.list_granted(request(t, v1::ListGrantedRequest { env: "prod".into() })).await),
            "Use (broker)" => brokered_use(&self.broker, t),
            "Init" => done(admin.init(request(t, v1::InitRequest { passphrase })).await),
            "Unlock" => done(admin.unlock(request(t, v1::UnlockRequest { passphrase })).await),
            "Seal" => done(admin.seal(request(t, v1::SealRequest {})).await),
            "Status" => done(admin.status(request(t, v1::StatusRequest {})).await),
            "PutSecret" => {
                let secret = secret_ref("scratch", &format!("put-{tag}"));
                let put = v1::PutSecretRequest { secret, value: b"v".to_vec(), ..Default::default() };
                done(admin.put_secret(request(t, put)).await)
            }
            "ShowSecret" => {
                let show = v1::ShowSecretRequest { secret: secret_ref("prod", "telegram"), reveal: true, version: 0 };
                done(admin.show_secret(request(t, show)).await)
            }
            "ListSecrets" => done(admin.list_secrets(request(t, v1::ListSecretsRequest { env: "prod".into() })).await),
            "ListVersions" => {
                let versions = v1::ListVersionsRequest { secret: secret_ref("prod", "telegram") };
                done(admin.list_versions(request(t, versions)).await)
            }
            "DeleteSecret" => {
                let delete = v1::DeleteSecretRequest { secret: secret_ref("scratch", &format!("del-{tag}")) };
                done(admin.delete_secret(request(t, delete)).await)
            }
            "SetRotation" => {
                let change = v1::RotationChange { rotator: Some("generate".into()), ..Default::default() };
                let set = v1::SetRotationRequest {
                    secret: secret_ref("scratch", &format!("put-{tag}")),
                    change: Some(change),
                };
                done(admin.set_rotation(request(t, set)).await)
            }
            "RotateSecret" => {
                let rotate =
                    v1::RotateSecretRequest { secret: secret_ref("scratch", &format!("put-{tag}")), value: vec![] };
                done(admin.rotate_secret(request(t, rotate)).await)
            }
            "ListRotations" => done(admin.list_rotations(request(t, v1::ListRotationsRequest::default())).await),
            "RevokeAll" => done(admin.revoke_all(request(t, v1::RevokeAllRequest::default())).await),
            "ListIncidents" => done(admin.list_incidents(request(t, v1::ListIncidentsRequest {})).await),
            "ShowIncident" => {
                done(admin.show_incident(request(t, v1::ShowIncidentRequest { id: 999, hours: 0 })).await)
            }
            "QueryAudit" => done(admin.query_audit(request(t, v1::QueryAuditRequest { filter: filter(5) })).await),
            "ExportAudit" => first_message(admin.export_audit(request(t, v1::ExportAuditRequest {})).await).await,
            "TailAudit" => {
                first_message(admin.tail_audit(request(t, v1::TailAuditRequest { filter: filter(1) })).await).await
            }
            "VerifyAudit" => done(admin.verify_audit(request(t, v1::VerifyAuditRequest {})).await),
            "AcknowledgeIntegrity" => {
                done(admin.acknowledge_integrity(request(t, v1::AcknowledgeIntegrityRequest {})).await)
            }
            "HashValue" => done(
                admin
                    .hash_value(request(
                        t,
                        v1::HashValueRequest {
                            value: b"candidate".to_vec(),
                            current_of: secret_ref("prod", "telegram"),
                        },
                    ))
                    .await,
            ),
            "AddClient" => {
                let add = v1::AddClientRequest {
                    name: format!("add-{tag}"),
                    uid: 4242,
                    gid: None,
                    exe: String::new(),
                    allow: vec!["scratch/*".into()],
                    exe_sha256: String::new(),
                    ..Default::default()
                };
                done(admin.add_client(request(t, add)).await)
            }
            "RemoveClient" => done(admin.remove_client(request(t, v1::ClientName { name: format!("rm-{tag}") })).await),
            "SetClientEnabled" => {
                let disable = v1::SetClientEnabledRequest { name: scratch, enabled: false };
                done(admin.set_client_enabled(request(t, disable)).await)
            }
            "Grant" => {
                let grant = v1::GrantRequest { name: scratch, patterns: pattern, ..Default::default() };
                done(admin.grant(request(t, grant)).await)
            }
            "Ungrant" => {
                let ungrant = v1::GrantRequest { name: scratch, patterns: pattern, ..Default::default() };
                done(admin.ungrant(request(t, ungrant)).await)
            }
            "ListClients" => done(admin.list_clients(request(t, v1::ListClientsRequest {})).await),
            "CreateToken" => {
                let create = v1::CreateTokenRequest { client: scratch, ttl_secs: 600, ..Default::default() };
                done(admin.create_token(request(t, create)).await)
            }
            "ListTokens" => done(admin.list_tokens(request(t, v1::ListTokensRequest {})).await),
            "RevokeTokens" => {
                let revoke = v1::RevokeTokensRequest { accessor: self.accessor.clone(), all: false };
                done(admin.revoke_tokens(request(t, revoke)).await)
            }
            "Rekey" => {
                // The same passphrase and parameters: only the salt changes.
                let rekey = v1::RekeyRequest { passphrase, new_passphrase: Vec::new(), kdf: None };
                done(admin.rekey(request(t, rekey)).await)
            }
            "RotateKey" => done(admin.rotate_key(request(t, v1::RotateKeyRequest { rewrap: false })).await),
            "RewrapKeys" => {
                done(admin.rewrap_keys(request(t, v1::RewrapKeysRequest { after: 0, batch: 100, term: 0 })).await)
            }
            "Backup" => first_message(admin.backup(request(t, v1::BackupRequest {})).await).await,
            other => Err(Status::unimplemented(format!("the test has no call {other:?}"))),
        }
    }
}

// ---------------------------------------------------------------- the parent

/// A copy of this test binary that every uid can execute (the target dir may not
/// be reachable), at its canonical path (as /proc/PID/exe will name it).
fn child_binary() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new().prefix("vault-e2e-bin-").tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.path().join("authz-child");
    fs::copy(std::env::current_exe().unwrap(), &copy).unwrap();
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).unwrap();
    let copy = copy.canonicalize().unwrap();
    // A fresh copy can be briefly "text file busy" if a fork elsewhere inherited the write fd.
    vault_tests::wait_for("the copy to run", || {
        std::process::Command::new(&copy).args(["--list", "--exact", "authz_child"]).output().ok()
    });
    (dir, copy)
}

/// One row's results: call → (status code name, message).
type Results = BTreeMap<String, (String, String)>;

fn run_row(d: &Daemon, exe: &Path, kind: Kind, token: Option<&str>, accessor: &str) -> Results {
    let spec = serde_json::json!({
        "agent": d.agent_socket,
        "admin": d.admin_socket,
        "token": token,
        "tag": kind.tag(),
        "passphrase": std::str::from_utf8(PASSPHRASE).unwrap(),
        "accessor": accessor,
        "broker": d.dir.path().join("broker.sock"),
        "calls": call_order(),
    });
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["authz_child", "--exact", "--nocapture", "--test-threads=1"]);
    cmd.env(CHILD_ENV, spec.to_string()).current_dir("/");
    if let Some(uid) = kind.who().2 {
        cmd.uid(uid).gid(uid);
    }
    let out = vault_tests::run(cmd, b"");
    let mut results = Results::new();
    for line in out.text().lines() {
        // libtest's "test authz_child ... " has no newline before the first result.
        if let Some((_, json)) = line.split_once(MARK) {
            let r: serde_json::Value = serde_json::from_str(json).unwrap();
            let text = |k: &str| r[k].as_str().unwrap().to_owned();
            results.insert(text("call"), (text("code"), text("message")));
        }
    }
    if out.code != Some(0) || results.len() != call_order().len() {
        let failed = format!("CHILD FAILED ({:?}): {}", out.code, out.stderr.trim());
        for call in call_order() {
            results.entry(call.to_owned()).or_insert_with(|| (failed.clone(), String::new()));
        }
    }
    results
}

async fn admin(d: &Daemon) -> AdminClient<Channel> {
    vault_proto::admin_client(vault_proto::connect(&d.admin_socket).await.unwrap())
}

async fn put(admin: &mut AdminClient<Channel>, env: &str, name: &str, value: &[u8]) {
    let put = v1::PutSecretRequest { secret: secret_ref(env, name), value: value.to_vec(), ..Default::default() };
    admin.put_secret(put).await.unwrap();
}

async fn add_client(admin: &mut AdminClient<Channel>, name: &str, uid: u32, exe: &str, allow: &[&str]) {
    let allow = allow.iter().map(|p| (*p).to_owned()).collect();
    let add = v1::AddClientRequest { name: name.into(), uid, gid: None, exe: exe.into(), allow, ..Default::default() };
    admin.add_client(add).await.unwrap();
}

/// A token for `client`: (token, accessor, expires_unix).
async fn create_token(admin: &mut AdminClient<Channel>, client: &str, ttl_secs: u64) -> (String, String, i64) {
    let create = v1::CreateTokenRequest { client: client.into(), ttl_secs, ..Default::default() };
    let reply = admin.create_token(create).await.unwrap().into_inner();
    let info = reply.info.unwrap();
    (reply.token, info.accessor, info.expires_unix)
}

fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_by_every_kind_of_caller() {
    if !is_root() {
        vault_tests::skip_unless_ci("needs root to call as other uids (run as root, as CI does)");
        return;
    }
    let started = Instant::now();
    // The broker's route `use` attaches prod/telegram for a local upstream that
    // knows it, on a thread of its own (it has its own runtime), until the test ends.
    let upstream_dir = tempfile::tempdir().unwrap();
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (_stop, stopped) = std::sync::mpsc::channel::<()>();
    let dir = upstream_dir.path().to_owned();
    std::thread::spawn(move || {
        let up = upstream::Upstream::start(&dir, &["123:tg"]);
        started_tx.send((up.url.clone(), up.ca_file.clone())).unwrap();
        let _ = stopped.recv();
    });
    let (url, ca_file) = started_rx.recv().unwrap();
    let config = format!(
        "agent_socket_mode = \"0666\"\n[limits]\nclient_rate = 1000.0\nclient_burst = 1000.0\n\
         [broker]\nsocket_mode = \"0666\"\n[[broker.route]]\nname = \"use\"\nprovider = \"anthropic\"\n\
         upstream = \"{url}\"\nsecret = \"prod/telegram\"\nca_file = \"{}\"\n",
        vault_tests::path_str(&ca_file)
    );
    let d = Daemon::start_with(Options { config: Some(config), ..Options::default() });
    d.init();
    fs::set_permissions(d.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&d.admin_socket, fs::Permissions::from_mode(0o666)).unwrap(); // the mistake
    let (_bin_dir, child_exe) = child_binary();
    let exe = child_exe.to_str().unwrap();
    let uid = |kind: Kind| kind.who().2.unwrap();

    let mut admin = admin(&d).await;
    // The expiring token first, so its second has passed by the time its row runs.
    add_client(&mut admin, "tok-expired", uid(Kind::TokenExpired), "", &["prod/telegram"]).await;
    let (expired, _, expires_unix) = create_token(&mut admin, "tok-expired", 1).await;
    put(&mut admin, "prod", "telegram", b"123:tg").await;
    put(&mut admin, "prod", "other", b"other").await;
    add_client(&mut admin, "granted", uid(Kind::Granted), exe, &["prod/telegram"]).await;
    add_client(&mut admin, "nogrant", uid(Kind::NoGrant), "", &["prod/other"]).await;
    add_client(&mut admin, "disabled", uid(Kind::Disabled), "", &["prod/telegram"]).await;
    admin.set_client_enabled(v1::SetClientEnabledRequest { name: "disabled".into(), enabled: false }).await.unwrap();
    add_client(&mut admin, "wrongexe", uid(Kind::WrongExe), "/usr/bin/false", &["prod/telegram"]).await;
    // The valid token's client requires an executable its uid's callers do not
    // have, so only the token (judged by its client alone) can grant the read.
    add_client(&mut admin, "tok-valid", uid(Kind::TokenValid), "/usr/bin/false", &["prod/telegram"]).await;
    let (valid, _, _) = create_token(&mut admin, "tok-valid", 0).await;
    // The revoked token's client would grant the read by uid: a fallback shows as OK.
    add_client(&mut admin, "tok-revoked", uid(Kind::TokenRevoked), "", &["prod/telegram"]).await;
    let (revoked, revoked_accessor, _) = create_token(&mut admin, "tok-revoked", 0).await;
    let revoke = v1::RevokeTokensRequest { accessor: revoked_accessor, all: false };
    assert_eq!(admin.revoke_tokens(revoke).await.unwrap().into_inner().revoked, 1);
    // Two containers on one uid: A's client is token-only, B's is not, and both
    // are granted the secret; B's uid-matched grant must not answer A's bare uid.
    let shared = uid(Kind::TokenOnlyBare);
    let add = v1::AddClientRequest {
        name: "cont-a".into(),
        uid: shared,
        allow: vec!["prod/telegram".into()],
        token_only: true,
        ..Default::default()
    };
    admin.add_client(add).await.unwrap();
    add_client(&mut admin, "cont-b", shared, "", &["prod/telegram"]).await;
    let add = v1::AddClientRequest {
        name: "use-only".into(),
        uid: uid(Kind::UseOnly),
        allow: vec!["prod/telegram".into()],
        use_only: true,
        ..Default::default()
    };
    admin.add_client(add).await.unwrap();
    let (container_token, _, _) = create_token(&mut admin, "cont-a", 0).await;
    // Each row's throwaway objects: a secret to delete, a client to remove, a client
    // to disable, grant, ungrant and make a token for, and a token to revoke.
    let mut accessors = BTreeMap::new();
    for kind in Kind::ALL {
        let tag = kind.tag();
        put(&mut admin, "scratch", &format!("del-{tag}"), b"v").await;
        add_client(&mut admin, &format!("rm-{tag}"), 4243, "", &[]).await;
        add_client(&mut admin, &format!("scratch-{tag}"), 4244, "", &[]).await;
        accessors.insert(tag, create_token(&mut admin, &format!("scratch-{tag}"), 0).await.1);
    }
    let setup = started.elapsed();

    // The owner last: its Seal and Unlock are the last calls of the run.
    let mut results = BTreeMap::new();
    for kind in Kind::ALL.into_iter().cycle().skip(1).take(Kind::ALL.len()) {
        let token = match kind {
            Kind::TokenValid | Kind::TokenWrongUid => Some(valid.as_str()),
            Kind::TokenExpired => {
                vault_tests::wait_for("the 1 s token to expire", || (now_unix() >= expires_unix).then_some(()));
                Some(expired.as_str())
            }
            Kind::TokenRevoked => Some(revoked.as_str()),
            Kind::TokenOnlyToken => Some(container_token.as_str()),
            _ => None,
        };
        results.insert(kind.tag(), run_row(&d, &child_exe, kind, token, &accessors[kind.tag()]));
        // A row that managed to seal the vault (a bypass, reported in its cell)
        // must not turn the next rows' cells into FAILED_PRECONDITION.
        if admin.status(v1::StatusRequest {}).await.unwrap().into_inner().sealed {
            d.unlock();
        }
    }
    let calls_took = started.elapsed() - setup;

    // Every cell.
    let mut mismatches = Vec::new();
    let columns: Vec<&str> = AGENT_CALLS.iter().chain(&BROKER_CALLS).chain(&ADMIN_CALLS).copied().collect();
    for kind in Kind::ALL {
        for call in &columns {
            let want = code_name(kind.want(call));
            let (got, message) = &results[kind.tag()][*call];
            if got != want {
                mismatches.push(format!("{:<26} {call:<18} want {want:<18} got {got}: {message}", kind.label()));
            }
        }
    }
    // Not granted looks exactly like not there: same code, same message but the name.
    let message = |kind: Kind, call: &str| results[kind.tag()][call].1.clone();
    for kind in [Kind::NoGrant, Kind::Disabled, Kind::OtherUid, Kind::WrongExe, Kind::TokenOnlyBare, Kind::UseOnly] {
        let denied = message(kind, "GetSecret").replace("telegram", "NAME");
        let missing = message(kind, "GetSecret missing").replace("nosuch", "NAME");
        let batch = message(kind, "GetSecrets").replace("telegram", "NAME");
        if denied != missing || batch != missing || !missing.contains("not found") {
            mismatches
                .push(format!("{}: not granted {denied:?} / {batch:?} differs from missing {missing:?}", kind.label()));
        }
    }
    // A refused token says nothing about why.
    let refusals: Vec<String> = [Kind::TokenExpired, Kind::TokenRevoked, Kind::TokenWrongUid]
        .into_iter()
        .flat_map(|k| {
            AGENT_CALLS.iter().filter(move |c| k.want(c) == Code::Unauthenticated).map(move |c| message(k, c))
        })
        .collect();
    if refusals.iter().any(|m| *m != refusals[0]) {
        mismatches.push(format!("token refusals differ: {refusals:?}"));
    }

    // The refused admin calls changed nothing; the owner's did what they say.
    let clients = admin.list_clients(v1::ListClientsRequest {}).await.unwrap().into_inner().clients;
    let client = |name: &str| clients.iter().find(|c| c.name == name);
    let secrets = admin.list_secrets(v1::ListSecretsRequest { env: "scratch".into() }).await.unwrap().into_inner();
    let secret = |name: &str| secrets.secrets.iter().any(|s| s.name == name);
    // Put once (version 1), set to `generate` and rotated (version 2).
    let rotated = |name: &str| {
        secrets.secrets.iter().any(|s| s.name == name && s.rotator == "generate:32:alnum" && s.current_version == 2)
    };
    let tokens = admin.list_tokens(v1::ListTokensRequest {}).await.unwrap().into_inner().tokens;
    for kind in Kind::ALL {
        let tag = kind.tag();
        let owner = kind == Kind::Owner;
        let scratch = client(&format!("scratch-{tag}"));
        let revoked = tokens.iter().any(|t| t.accessor == accessors[tag] && t.revoked_unix != 0);
        let made = tokens.iter().filter(|t| t.client == format!("scratch-{tag}")).count();
        let effects = [
            ("a client added", client(&format!("add-{tag}")).is_some()),
            ("a client removed", client(&format!("rm-{tag}")).is_none()),
            ("a client disabled", scratch.is_some_and(|c| !c.enabled)),
            ("a grant left", scratch.is_some_and(|c| c.grants.iter().any(|g| g == "scratch/granted"))),
            ("a secret put", secret(&format!("put-{tag}"))),
            ("a secret rotated", rotated(&format!("put-{tag}"))),
            ("a secret deleted", !secret(&format!("del-{tag}"))),
            ("a token revoked", revoked),
            ("a token created", made == 2),
        ];
        for (what, happened) in effects {
            // The owner's Grant is undone by its Ungrant; everything else it did stays.
            let expected = owner && what != "a grant left";
            if happened != expected {
                mismatches.push(format!("{}: {what}: {happened}, want {expected}", kind.label()));
            }
        }
    }
    let status = admin.status(v1::StatusRequest {}).await.unwrap().into_inner();
    if status.sealed {
        mismatches.push("the vault is sealed after the owner's Seal, Unlock".into());
    }

    // The table, callers across, RPCs down.
    let mut table = format!("{:<18}", "");
    for kind in Kind::ALL {
        table += &format!(" {:>11}", kind.tag());
    }
    for call in &columns {
        table += &format!("\n{call:<18}");
        for kind in Kind::ALL {
            let got = &results[kind.tag()][*call].0;
            let flag = if got == code_name(kind.want(call)) { "" } else { "!" };
            table += &format!(" {:>11}", format!("{flag}{}", short(got)));
        }
    }
    table += "\n(PD permission denied, NF not found, UA unauthenticated, AE already exists; ! unexpected)";
    eprintln!(
        "{table}\nsetup {:.1} s, {} calls in {:.1} s",
        setup.as_secs_f64(),
        Kind::ALL.len() * columns.len(),
        calls_took.as_secs_f64()
    );
    assert!(
        mismatches.is_empty(),
        "{} of {} cells (and checks) are wrong:\n{}\n\n{table}\nvaultd's log:\n{}",
        mismatches.len(),
        Kind::ALL.len() * columns.len(),
        mismatches.join("\n"),
        d.log()
    );
    let verified = d.audit_verify();
    assert!(verified.is_ok(), "{verified:?}");
}
