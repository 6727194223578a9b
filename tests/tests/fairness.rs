//! No local user can lock out the agents or the owner (issue 18): connections,
//! watch streams, audit volume, limits and bad input, each attack as another
//! uid against a real vaultd, most under systemd's default file limit (1024).
//!
//! Other uids: a thread of this (root) test process switches its own uid and
//! gid (the kernel keeps credentials per thread) before it connects, so vaultd
//! sees that uid in SO_PEERCRED. Needs root, as CI is; elsewhere the tests say
//! "skipped" (and fail under CI).
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};
use vault_proto::v1::agent_client::AgentClient;
use vault_proto::v1::{GetSecretRequest, GetSecretsRequest};
use vault_tests::{Daemon, Options, is_root};

/// The attacker and a legitimate agent of another uid.
const ATTACKER: u32 = 64001;
const AGENT: u32 = 64002;
/// systemd's default soft file limit, which the attacks exhausted.
const SYSTEMD_NOFILE: &str = "ulimit -n 1024";

fn root_or_skip() -> bool {
    if !is_root() {
        vault_tests::skip_unless_ci("needs root to connect as other uids");
    }
    is_root()
}

/// A vaultd whose agent socket every uid may reach, with `config` added, under
/// the shell `prelude` (a file limit); the agent `AGENT` is granted
/// `default/telegram`.
fn daemon(config: &str, prelude: Option<&str>) -> Daemon {
    let config = format!("agent_socket_mode = \"0666\"\n{config}");
    let opts = Options { config: Some(config), sh_prelude: prelude.map(str::to_owned), ..Options::default() };
    let d = Daemon::start_with(opts);
    d.init();
    fs::set_permissions(d.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    d.put("telegram", b"123:tg");
    d.ctl(&["client", "add", "agent", "--uid", &AGENT.to_string(), "--allow", "default/telegram"], b"").ok();
    d
}

/// Runs `f` on a thread of its own whose uid and gid are `uid`: only that thread
/// changes credentials, and what it connects is `uid`'s to vaultd.
fn as_uid<T: Send>(uid: u32, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let gid = rustix::process::Gid::from_raw(uid);
            rustix::thread::set_thread_res_gid(gid, gid, gid).unwrap();
            let id = rustix::process::Uid::from_raw(uid);
            rustix::thread::set_thread_res_uid(id, id, id).unwrap();
            f()
        })
        .join()
        .unwrap()
    })
}

/// A gRPC channel to `socket` whose connections `uid` makes.
async fn channel_as(uid: u32, socket: &Path) -> Channel {
    let socket = socket.to_owned();
    Endpoint::from_static("http://vaultd.local")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                let stream = as_uid(uid, || std::os::unix::net::UnixStream::connect(&socket))?;
                stream.set_nonblocking(true)?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::from_std(stream)?))
            }
        }))
        .await
        .unwrap()
}

async fn agent_as(uid: u32, d: &Daemon) -> AgentClient<Channel> {
    vault_proto::agent_client(channel_as(uid, &d.agent_socket).await)
}

fn get(name: &str) -> GetSecretRequest {
    GetSecretRequest { env: String::new(), name: name.into(), version: 0 }
}

fn names(names: &[&str]) -> GetSecretsRequest {
    GetSecretsRequest { env: String::new(), names: names.iter().map(|n| (*n).into()).collect() }
}

/// vaultd's CPU time so far (utime + stime of /proc/PID/stat, at USER_HZ = 100).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    (fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()) as f64 / 100.0
}

/// Descriptors vaultd has open.
fn open_fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// The client's HTTP/2 preface and an empty SETTINGS frame: a connection that
/// says this and nothing more is open and idle.
const HELLO: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// How an attacker's connection behaves once connected.
#[derive(Debug, Clone, Copy)]
enum Manner {
    /// Says nothing.
    Silent,
    /// Half of the preface, then nothing.
    HalfPreface,
    /// Shuts its sending side (half-closed).
    HalfClosed,
    /// The preface and settings, then nothing: an idle HTTP/2 connection.
    Idle,
}

const MANNERS: [Manner; 4] = [Manner::Silent, Manner::HalfPreface, Manner::HalfClosed, Manner::Idle];

/// `n` connections to `socket` made by `uid`, each behaving in turn as
/// [`MANNERS`] says, made as fast as vaultd's backlog takes them (for at most
/// 15 s); all are held.
fn flood(uid: u32, socket: &Path, n: usize) -> Vec<OwnedFd> {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    as_uid(uid, || {
        let addr = SocketAddrUnix::new(socket).unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut held = Vec::new();
        while held.len() < n && Instant::now() < deadline {
            let flags = SocketFlags::NONBLOCK | SocketFlags::CLOEXEC;
            let fd = rustix::net::socket_with(AddressFamily::UNIX, SocketType::STREAM, flags, None).unwrap();
            match rustix::net::connect(&fd, &addr) {
                Ok(()) => {}
                // The backlog is full: vaultd is not accepting (fast enough).
                Err(rustix::io::Errno::AGAIN) => {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                Err(e) => panic!("connecting: {e}"),
            }
            // vaultd may have closed it already: what it says is then lost.
            let _ = match MANNERS[held.len() % MANNERS.len()] {
                Manner::Silent => Ok(0),
                Manner::HalfPreface => rustix::io::write(&fd, &HELLO[..12]),
                Manner::HalfClosed => rustix::net::shutdown(&fd, rustix::net::Shutdown::Write).map(|()| 0),
                Manner::Idle => rustix::io::write(&fd, HELLO),
            };
            held.push(fd);
        }
        held
    })
}

/// How many of `fds` vaultd has not closed (reading them to their end) by `deadline`.
fn still_open(fds: &[OwnedFd], deadline: Instant) -> usize {
    let mut open: Vec<&OwnedFd> = fds.iter().collect();
    let mut buf = [0; 4096];
    loop {
        open.retain(|fd| {
            loop {
                match rustix::io::read(fd, &mut buf) {
                    Ok(0) => break false,
                    Ok(_) => continue,
                    Err(rustix::io::Errno::AGAIN) => break true,
                    Err(_) => break false,
                }
            }
        });
        if open.is_empty() || Instant::now() >= deadline {
            return open.len();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// This process may hold `n` more descriptors (its soft limit raised to its hard one).
fn allow_descriptors(n: u64) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    setrlimit(Resource::Nofile, rustix::process::Rlimit { current: limit.maximum, ..limit }).unwrap();
    assert!(limit.maximum.is_none_or(|max| max > n + 200), "the test needs {n} descriptors: {limit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_thousand_idle_and_half_open_connections_lock_nobody_out() {
    if !root_or_skip() {
        return;
    }
    allow_descriptors(2000);
    let mut d = daemon("", Some(SYSTEMD_NOFILE));
    let pid = d.pid();
    let mut agent = agent_as(AGENT, &d).await;
    assert_eq!(agent.get_secret(get("telegram")).await.unwrap().into_inner().value, b"123:tg");

    let socket = d.agent_socket.clone();
    let held = tokio::task::spawn_blocking(move || flood(ATTACKER, &socket, 2000)).await.unwrap();
    let open = still_open(&held, Instant::now() + Duration::from_millis(500));
    eprintln!("the attacker connected {} times; vaultd holds {open} of them", held.len());

    // Another uid's agent reads as fast as ever, on a connection made now.
    let mut agent = agent_as(AGENT, &d).await;
    let mut took = Vec::new();
    for _ in 0..200 {
        let started = Instant::now();
        let value = tokio::time::timeout(Duration::from_secs(5), agent.get_secret(get("telegram"))).await;
        assert_eq!(value.unwrap().unwrap().into_inner().value, b"123:tg");
        took.push(started.elapsed());
    }
    took.sort();
    let p99 = took[took.len() * 99 / 100];
    eprintln!("the other agent's reads: p50 {:?}, p99 {p99:?}", took[took.len() / 2]);
    assert!(p99 < Duration::from_millis(50), "p99 {p99:?}");

    // The owner is served, and vaultd idles while the connections are held.
    let status = tokio::task::spawn_blocking({
        let ctl = d.ctl_command(&["--json", "status"]);
        move || vault_tests::run(ctl, b"")
    });
    assert_eq!(status.await.unwrap().ok().json()["sealed"], false);
    let fds = open_fds(pid);
    assert!(fds < 1024 - 128, "vaultd holds {fds} descriptors of 1024: none kept in reserve");
    let cpu = cpu_seconds(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let busy = (cpu_seconds(pid) - cpu) / 2.0;
    eprintln!("vaultd holds {fds} descriptors and uses {:.1} % of a core", busy * 100.0);
    assert!(busy < 0.10, "vaultd uses {:.0} % of a core with idle connections held", busy * 100.0);

    // revoke-all completes and closes every connection, the idle ones too.
    let open = still_open(&held, Instant::now());
    assert!(open > 0, "nothing held to close");
    let revoke = d.ctl_command(&["revoke-all", "--reason", "connection flood", "--yes"]);
    tokio::task::spawn_blocking(move || vault_tests::run(revoke, b"")).await.unwrap().ok();
    let left = still_open(&held, Instant::now() + Duration::from_secs(3));
    assert_eq!(left, 0, "{left} of the {open} connections held survived revoke-all");
    d.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_uid_holding_every_watch_it_can_locks_nobody_out() {
    if !root_or_skip() {
        return;
    }
    let d = daemon("", Some(SYSTEMD_NOFILE));
    d.ctl(&["client", "add", "hog", "--uid", &ATTACKER.to_string(), "--allow", "default/telegram"], b"").ok();
    // The hog opens watch streams until refused, 64 to a connection.
    let mut hog = agent_as(ATTACKER, &d).await;
    let mut held = Vec::new();
    let refusal = loop {
        if held.len() % 64 == 63 {
            hog = agent_as(ATTACKER, &d).await;
        }
        match hog.watch_secrets(names(&["telegram"])).await {
            Ok(stream) => held.push(stream.into_inner()),
            // Opening a watch is a read: it waits out the rate limit.
            Err(status) if status.metadata().get("retry-after-ms").is_some() => {
                let wait: u64 = status.metadata().get("retry-after-ms").unwrap().to_str().unwrap().parse().unwrap();
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            Err(status) => break status,
        }
        assert!(held.len() <= 4096, "one uid holds every watch slot there is");
    };
    eprintln!("one uid holds {} watch streams, then: {refusal:?}", held.len());
    assert_eq!(refusal.code(), Code::ResourceExhausted, "{refusal:?}");

    // Another client still watches...
    let mut agent = agent_as(AGENT, &d).await;
    let mut stream = agent.watch_secrets(names(&["telegram"])).await.unwrap().into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().secrets[0].value, b"123:tg");
    // ...and the owner's `vaultctl exec` (which watches for rotations) works.
    let exec = d.ctl(&["exec", "--secret", "TG=telegram", "--", "sh", "-c", "test \"$TG\" = 123:tg"], b"");
    assert_eq!(exec.code, Some(0), "{exec:?}");
}

/// The logical size of the vault's database (what its pages hold, the WAL's too).
fn database_bytes(d: &Daemon) -> i64 {
    d.db()
        .query_row("SELECT (page_count - freelist_count) * page_size FROM pragma_page_count, pragma_freelist_count, pragma_page_size", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_floods_grow_the_log_by_little_and_slow_nobody_else() {
    if !root_or_skip() {
        return;
    }
    // The case as it reads: 60 s of floods must grow the database by
    // less than a megabyte.
    const FLOOD: Duration = Duration::from_secs(60);
    let d = daemon("", Some(SYSTEMD_NOFILE));
    d.audit_verify().unwrap();
    let before = database_bytes(&d);
    let deadline = Instant::now() + FLOOD;
    let mut floods = Vec::new();
    for c in 0..4 {
        let flooder = agent_as(ATTACKER, &d).await;
        for t in 0..8 {
            let mut flooder = flooder.clone();
            floods.push(tokio::spawn(async move {
                let mut sent = 0u64;
                while Instant::now() < deadline {
                    let random: Vec<String> = (0..256).map(|i| format!("n{c}-{t}-{sent}-{i}")).collect();
                    let request = GetSecretsRequest { env: String::new(), names: random };
                    let refused = flooder.get_secrets(request).await.unwrap_err();
                    assert!(matches!(refused.code(), Code::NotFound | Code::ResourceExhausted), "{refused:?}");
                    sent += 1;
                }
                sent
            }));
        }
    }
    // Meanwhile a legitimate agent reads, unaffected.
    let mut agent = agent_as(AGENT, &d).await;
    let mut reads = 0;
    while Instant::now() < deadline {
        let read = tokio::time::timeout(Duration::from_secs(1), agent.get_secret(get("telegram"))).await;
        assert_eq!(read.unwrap().unwrap().into_inner().value, b"123:tg");
        reads += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut sent = 0;
    for flood in floods {
        sent += flood.await.unwrap();
    }
    d.audit_verify().unwrap();
    let grown = database_bytes(&d) - before;
    eprintln!(
        "{sent} refused GetSecrets of 256 names in {FLOOD:?} (and {reads} reads by another agent) grew the database \
         by {grown} bytes"
    );
    assert!(sent > 100, "the flood hardly ran: {sent} requests");
    assert!(grown < 1_000_000, "{FLOOD:?} of refusals grew the database by {grown} bytes");
    // What was not recorded one by one is counted, and the record says who and how much.
    let stop = tokio::task::spawn_blocking(move || {
        let mut d = d;
        d.stop();
        d
    });
    let mut d = stop.await.unwrap();
    d.launch();
    d.unlock();
    let summaries = d.audit_query(&["--type", "request.refusals"]);
    let counted: u64 = summaries.iter().map(|s| s["detail"]["count"].as_u64().unwrap()).sum();
    let individual = d.audit_query(&["--type", "security"]).len() as u64;
    eprintln!("{} summaries count {counted} refusals; {individual} security records in all", summaries.len());
    assert!(summaries.iter().all(|s| s["actor"]["uid"] == ATTACKER), "{summaries:#?}");
    assert!(counted > sent, "{counted} counted of {sent} requests (of 256 names each)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn get_secrets_of_twenty_at_full_speed_is_never_refused() {
    // The benchmark's heaviest read (vault-bench's GetSecrets ×20, 32 in
    // flight, audit on) for a few seconds: the journal's import may fall
    // behind, which slows the reads down and refuses none. A debug build reads
    // too slowly for the import to lag: run it longer in release to see that
    // (VAULT_E2E_LOAD_SECONDS=30 cargo test --release …; 74df70f refused
    // hundreds then).
    let seconds = std::env::var("VAULT_E2E_LOAD_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let d = Daemon::initialized();
    let secrets: Vec<String> = (0..20).map(|i| format!("bench-{i}")).collect();
    for name in &secrets {
        d.put(name, &[b'v'; 100]);
    }
    let (before, ..) = d.audit_verify().unwrap();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let mut agent = vault_proto::agent_client(vault_proto::connect(&d.agent_socket).await.unwrap());
        let secrets = secrets.clone();
        tasks.push(tokio::spawn(async move {
            let (mut served, mut refused) = (0u64, Vec::new());
            while Instant::now() < deadline {
                let request = GetSecretsRequest { env: String::new(), names: secrets.clone() };
                match agent.get_secrets(request).await {
                    Ok(_) => served += 1,
                    Err(status) => refused.push(status),
                }
            }
            (served, refused)
        }));
    }
    let (mut served, mut refused) = (0, Vec::new());
    for task in tasks {
        let (s, r) = task.await.unwrap();
        served += s;
        refused.extend(r);
    }
    eprintln!("GetSecrets ×20 for {seconds} s, 32 in flight: {served} served, {} refused", refused.len());
    assert!(refused.is_empty(), "{} refused, the first: {:?}", refused.len(), refused.first());
    // Every read served is recorded (and the verifications themselves).
    let (after, ..) = d.audit_verify().unwrap();
    assert_eq!(after - before, served * 20 + 1, "{before} entries before, {after} after");
}

/// A codec that sends the bytes it is given as the message, and takes any reply.
#[derive(Debug, Clone, Copy, Default)]
struct Raw;

impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl tonic::codec::Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), Status> {
        prost::bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let n = prost::bytes::Buf::remaining(src);
        Ok(Some(prost::bytes::Buf::copy_to_bytes(src, n).to_vec()))
    }
}

/// `bytes` sent as the request of `method` (`/vault.v1.Agent/GetSecret`).
async fn raw_call(channel: &Channel, method: &'static str, bytes: &[u8]) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(method);
    grpc.unary(Request::new(bytes.to_vec()), path, Raw).await.map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_a_clear_code_and_changes_nothing() {
    if !root_or_skip() {
        return;
    }
    let d = daemon("", None);
    let token = d.ctl(&["--json", "token", "create", "--client", "agent"], b"").ok().json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let agent_channel = channel_as(AGENT, &d.agent_socket).await;
    let admin_channel = vault_proto::connect(&d.admin_socket).await.unwrap();
    let mut failures = Vec::new();
    let mut check = |case: String, got: Result<Vec<u8>, Status>, want: Code| match got {
        Err(status) if status.code() == want => {}
        other => {
            failures.push(format!("{case}: {:?}, want {want:?}", other.map_err(|s| (s.code(), s.message().to_owned()))))
        }
    };

    // Bytes that are no protobuf message (a cut-off varint), and strings that
    // are not UTF-8: the agent's name, an admin secret reference's name.
    let not_protobuf = b"\xff";
    let not_utf8_name = b"\x12\x02\xff\xfe";
    let not_utf8_ref = b"\x0a\x04\x12\x02\xff\xfe";
    for rpc in ["GetSecret", "GetSecrets", "WatchSecrets"] {
        let method = Box::leak(format!("/vault.v1.Agent/{rpc}").into_boxed_str());
        for (what, bytes) in [("not protobuf", &not_protobuf[..]), ("a name not UTF-8", not_utf8_name)] {
            check(format!("{rpc}, {what}"), raw_call(&agent_channel, method, bytes).await, Code::InvalidArgument);
        }
    }
    for rpc in vault_tests::ADMIN_RPCS {
        let method = Box::leak(format!("/vault.v1.Admin/{rpc}").into_boxed_str());
        check(
            format!("{rpc}, not protobuf"),
            raw_call(&admin_channel, method, not_protobuf).await,
            Code::InvalidArgument,
        );
    }
    for rpc in ["PutSecret", "ShowSecret", "DeleteSecret", "ListVersions"] {
        let method = Box::leak(format!("/vault.v1.Admin/{rpc}").into_boxed_str());
        let got = raw_call(&admin_channel, method, not_utf8_ref).await;
        check(format!("{rpc}, a name not UTF-8"), got, Code::InvalidArgument);
    }

    // Versions no secret can have are not found, like any missing version.
    let mut agent = vault_proto::agent_client(agent_channel.clone());
    let mut owner = vault_proto::agent_client(vault_proto::connect(&d.agent_socket).await.unwrap());
    let mut admin = vault_proto::admin_client(admin_channel.clone());
    for version in [1 << 63, u64::MAX] {
        let request = || GetSecretRequest { env: String::new(), name: "telegram".into(), version };
        let got = agent.get_secret(request()).await.map(|r| r.into_inner().value);
        check(format!("GetSecret version {version} by a client"), got, Code::NotFound);
        let got = owner.get_secret(request()).await.map(|r| r.into_inner().value);
        check(format!("GetSecret version {version} by the owner"), got, Code::NotFound);
        let secret = Some(vault_proto::v1::SecretRef { env: String::new(), name: "telegram".into() });
        let show = vault_proto::v1::ShowSecretRequest { secret, reveal: true, version };
        let got = admin.show_secret(show).await.map(|r| r.into_inner().value);
        check(format!("ShowSecret --reveal version {version}"), got, Code::NotFound);
    }

    // Two authorization headers, whichever comes first.
    for (first, second) in [(token.as_str(), "vt_garbage"), ("vt_garbage", token.as_str())] {
        let mut request = Request::new(get("telegram"));
        for value in [first, second] {
            request.metadata_mut().append("authorization", format!("Bearer {value}").parse().unwrap());
        }
        let valid_first = first == token;
        let got = agent.get_secret(request).await.map(|r| r.into_inner().value);
        check(format!("two authorization headers, the valid one first: {valid_first}"), got, Code::Unauthenticated);
    }

    // Oversize authorization headers.
    for kib in [16, 24, 32, 48] {
        let mut request = Request::new(get("telegram"));
        let huge = format!("Bearer vt_{}", "a".repeat(kib << 10));
        request.metadata_mut().insert("authorization", huge.parse().unwrap());
        let got = agent.get_secret(request).await.map(|r| r.into_inner().value);
        check(format!("a {kib} KiB authorization header"), got, Code::ResourceExhausted);
    }

    assert!(failures.is_empty(), "{} cases got the wrong code:\n{}", failures.len(), failures.join("\n"));
    // Still serving, nothing changed, and nothing a client sent was an ERROR.
    assert_eq!(agent.get_secret(get("telegram")).await.unwrap().into_inner().value, b"123:tg");
    assert_eq!(d.status()["initialized"], true);
    let log = d.log();
    assert!(!log.lines().any(|l| l.contains(" ERROR ")), "vaultd logged an ERROR:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_ends_when_its_token_expires_or_goes_idle() {
    let d = Daemon::initialized();
    d.put("telegram", b"123:tg");
    d.ctl(&["client", "add", "bot", "--uid", "4242", "--allow", "default/telegram"], b"").ok();
    let mut agent = vault_proto::agent_client(vault_proto::connect(&d.agent_socket).await.unwrap());
    // A token good for an hour, then one that may sit idle for an hour.
    for limit in ["--ttl", "--idle"] {
        let created = d.ctl(&["--json", "token", "create", "--client", "bot", "--any-uid", limit, "1h"], b"");
        let token = created.ok().json()["token"].as_str().unwrap().to_owned();
        let mut request = Request::new(names(&["telegram"]));
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        let mut stream = agent.watch_secrets(request).await.unwrap().into_inner();
        assert_eq!(stream.message().await.unwrap().unwrap().secrets[0].value, b"123:tg");
        // Not yet.
        d.advance_clock(Duration::from_secs(3598));
        let early = tokio::time::timeout(Duration::from_millis(300), stream.message()).await;
        assert!(early.is_err(), "{limit}: the watch ended early: {early:?}");
        // vaultd's clock passes the expiry: the watch ends within a second.
        let moved = Instant::now();
        d.advance_clock(Duration::from_secs(3));
        let ended = tokio::time::timeout(Duration::from_secs(1), stream.message()).await;
        let status = ended.unwrap_or_else(|_| panic!("{limit}: the watch outlived its token by a second")).unwrap_err();
        eprintln!("{limit}: the watch ended {:?} after the clock moved past its token's end", moved.elapsed());
        assert_eq!(status.code(), Code::PermissionDenied, "{limit}: {status:?}");
    }
    let ended = d.audit_query(&["--type", "secret.watch"]);
    assert_eq!(ended.len(), 2, "{ended:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_uid_spends_its_own_budget_not_everyones() {
    if !root_or_skip() {
        return;
    }
    // Each caller 5 reads a second, everyone together 10.
    let limits = "[limits]\nclient_rate = 5.0\nclient_burst = 5.0\nglobal_rate = 10.0\nglobal_burst = 10.0\n";
    let d = daemon(limits, None);
    let mut flooder = agent_as(ATTACKER, &d).await;
    let (started, mut admitted) = (Instant::now(), 0);
    for _ in 0..200 {
        match flooder.get_secret(get("telegram")).await.unwrap_err().code() {
            Code::NotFound => admitted += 1,
            Code::ResourceExhausted => {}
            other => panic!("{other:?}"),
        }
    }
    // Its burst, and what its rate added meanwhile: at most half of everyone's.
    let fill = 5.0 + 5.0 * started.elapsed().as_secs_f64();
    assert!(f64::from(admitted) <= fill + 1.0, "the flooder's own limit admitted {admitted} of {fill:.1}");
    // What its limit refused spent nothing of everyone's: another uid reads its fill.
    let mut agent = agent_as(AGENT, &d).await;
    for i in 0..5 {
        let read = agent.get_secret(get("telegram")).await;
        assert!(read.is_ok(), "read {i} of another uid: {:?}", read.err());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_of_n_secrets_costs_n() {
    if !root_or_skip() {
        return;
    }
    let d = daemon("[limits]\nclient_rate = 1.0\nclient_burst = 5.0\n", None);
    let mut agent = agent_as(AGENT, &d).await;
    let five = names(&["telegram"; 5]);
    assert_eq!(agent.get_secrets(five.clone()).await.unwrap().into_inner().secrets.len(), 5);
    let refused = agent.get_secret(get("telegram")).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "five names cost five: {refused:?}");
    let limited = d.audit_query(&["--type", "request.rate_limited"]);
    assert_eq!(limited.len(), 1, "{limited:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_pause_their_connection_not_a_valid_token_on_another() {
    if !root_or_skip() {
        return;
    }
    let d = daemon("", None);
    let created = d.ctl(&["--json", "token", "create", "--client", "agent"], b"").ok().json();
    let token = created["token"].as_str().unwrap().to_owned();
    let with_token = |token: &str| {
        let mut request = Request::new(get("telegram"));
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        request
    };
    // One container of the uid keeps presenting bad tokens, until paused.
    let mut bad = agent_as(AGENT, &d).await;
    let mut codes = Vec::new();
    for i in 0..6 {
        codes.push(bad.get_secret(with_token(&format!("vt_{i:064}"))).await.unwrap_err().code());
    }
    assert_eq!(codes[..3], [Code::Unauthenticated; 3]);
    assert_eq!(codes.last(), Some(&Code::ResourceExhausted), "{codes:?}");
    // Another container of the same uid, on its own connection, is served.
    let mut good = agent_as(AGENT, &d).await;
    assert_eq!(good.get_secret(with_token(&token)).await.unwrap().into_inner().value, b"123:tg");
}

/// The pause is for guessing: a token vaultd knows but no longer honours
/// (revoked, here) is refused every time, and never pauses the connection, so an
/// agent that kept its old token a little too long is served as soon as it shows
/// the new one. (The 10-minute soak found it: a reader whose token was revoked
/// while it read back to back was refused "rate limit exceeded" with its new one.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_shown_again_and_again_does_not_pause_the_next_one() {
    if !root_or_skip() {
        return;
    }
    let d = daemon("", None);
    let create = || d.ctl(&["--json", "token", "create", "--client", "agent"], b"").ok().json();
    let old = create();
    d.ctl(&["token", "revoke", old["accessor"].as_str().unwrap()], b"").ok();
    let new = create()["token"].as_str().unwrap().to_owned();
    let with_token = |token: &str| {
        let mut request = Request::new(get("telegram"));
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        request
    };
    let mut agent = agent_as(AGENT, &d).await;
    for _ in 0..8 {
        let refused = agent.get_secret(with_token(old["token"].as_str().unwrap())).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    }
    assert_eq!(agent.get_secret(with_token(&new)).await.unwrap().into_inner().value, b"123:tg");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_and_an_idle_one_too_but_not_a_watch() {
    let config = "[limits]\nhandshake_timeout = \"1s\"\nidle_timeout = \"2s\"\n";
    let d = Daemon::start_with(Options { config: Some(config.into()), ..Options::default() });
    d.init();
    d.put("telegram", b"v1");
    let connect = |hello: &[u8]| {
        let stream = std::os::unix::net::UnixStream::connect(&d.agent_socket).unwrap();
        std::io::Write::write_all(&mut &stream, hello).unwrap();
        stream.set_nonblocking(true).unwrap();
        OwnedFd::from(stream)
    };
    let started = Instant::now();
    let (silent, idle) = (connect(b""), connect(HELLO));
    let mut watcher = vault_proto::agent_client(vault_proto::connect(&d.agent_socket).await.unwrap());
    let mut watch = watcher.watch_secrets(names(&["telegram"])).await.unwrap().into_inner();
    watch.message().await.unwrap().unwrap();

    let silent_open = tokio::task::spawn_blocking(move || still_open(&[silent], started + Duration::from_secs(3)));
    assert_eq!(silent_open.await.unwrap(), 0, "a connection that never said hello is still open");
    let closed = started.elapsed();
    assert!(closed >= Duration::from_millis(900), "closed after {closed:?}: before its handshake time");
    let idle_open = tokio::task::spawn_blocking(move || still_open(&[idle], started + Duration::from_secs(5)));
    assert_eq!(idle_open.await.unwrap(), 0, "a connection with no stream is still open");
    let closed = started.elapsed();
    assert!(closed >= Duration::from_millis(1900), "closed after {closed:?}: before its idle time");
    // The watch's connection is not idle: it still carries the next value.
    d.ctl(&["rotate", "telegram"], b"v2").ok();
    let update = tokio::time::timeout(Duration::from_secs(5), watch.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(update.secrets[0].value, b"v2");
    // An agent whose channel sat idle past the timeout just reconnects.
    let mut agent = vault_proto::agent_client(vault_proto::connect(&d.agent_socket).await.unwrap());
    assert_eq!(agent.get_secret(get("telegram")).await.unwrap().into_inner().value, b"v2");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(agent.get_secret(get("telegram")).await.unwrap().into_inner().value, b"v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_accept_loop_backs_off_and_says_so_once() {
    if !root_or_skip() {
        return;
    }
    allow_descriptors(1500);
    // Caps set past what the file limit holds: accepting runs out of descriptors.
    let limits = "[limits]\nconnections = 5000\nconnections_per_uid = 5000\n";
    let d = daemon(limits, Some(SYSTEMD_NOFILE));
    let pid = d.pid();
    let socket = d.agent_socket.clone();
    let held = tokio::task::spawn_blocking(move || flood(ATTACKER, &socket, 1500)).await.unwrap();
    let cpu = cpu_seconds(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let busy = (cpu_seconds(pid) - cpu) / 2.0;
    let log = d.log();
    let warnings = log.lines().filter(|l| l.contains("accepting a connection failed")).count();
    eprintln!("{} connections, {warnings} warnings, {:.1} % of a core", held.len(), busy * 100.0);
    assert_eq!(warnings, 1, "{log}");
    assert!(log.contains("Too many open files"), "{log}");
    assert!(busy < 0.10, "vaultd spins at {:.0} % of a core out of descriptors", busy * 100.0);
    // Once the flood lets go, vaultd accepts again.
    drop(held);
    let mut agent = agent_as(AGENT, &d).await;
    let read = tokio::time::timeout(Duration::from_secs(5), agent.get_secret(get("telegram"))).await;
    assert_eq!(read.unwrap().unwrap().into_inner().value, b"123:tg");
}
