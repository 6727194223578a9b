//! The official Python `anthropic` and `openai` packages pointed at the
//! broker with a placeholder key (a vaultd token) get real replies, whole and
//! streamed, over the loopback port and the unix socket; the upstream saw the
//! real key; and the agent's process never held it: not in its environment,
//! not anywhere in its memory (read through /proc while it waits, the
//! placeholder found there as a control), not in its files.
#![allow(clippy::unwrap_used)]

mod upstream;

use std::io::{BufRead, Read, Write};
use std::os::unix::fs::FileExt;
use std::process::{Command, Stdio};
use upstream::Setup;
use vault_tests::{contains, files_under, skip_unless_ci};

const AGENT: &str = r#"
import os, sys, anthropic, openai
try:
    import httpx2 as httpx  # what these SDK versions are built on
except ImportError:
    import httpx

def check(client_a, client_o, label):
    msg = client_a.messages.create(model="claude-test", max_tokens=64, messages=[{"role": "user", "content": "hi"}])
    assert msg.content[0].text == "hello from the upstream", msg
    assert msg.usage.output_tokens == 25
    with client_a.messages.stream(model="claude-test", max_tokens=64, messages=[{"role": "user", "content": "hi"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == "part0 part1 ", text
    assert final.usage.output_tokens == 25
    chat = client_o.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
    assert chat.choices[0].message.content == "hello from the upstream"
    assert chat.usage.total_tokens == 21
    pieces, usage = [], None
    for chunk in client_o.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}],
                                                  stream=True, stream_options={"include_usage": True}):
        pieces += [c.delta.content for c in chunk.choices if c.delta.content]
        usage = chunk.usage or usage
    assert "".join(pieces) == "hello there" and usage.total_tokens == 21
    print(label, "ok", flush=True)

# Over the loopback port: the SDKs read their base URL and key from the environment.
tcp_a, tcp_o = anthropic.Anthropic(), openai.OpenAI()
assert tcp_a.api_key == os.environ["ANTHROPIC_API_KEY"] and tcp_a.api_key.startswith("vt_")
check(tcp_a, tcp_o, "tcp")
# Over the unix socket: no key at all, the kernel names the caller.
def uds():
    return httpx.Client(transport=httpx.HTTPTransport(uds=os.environ["BROKER_SOCKET"]))
unix_a = anthropic.Anthropic(base_url="http://broker/anthropic", api_key="unused", http_client=uds())
unix_o = openai.OpenAI(base_url="http://broker/openai/v1", api_key="unused", http_client=uds())
check(unix_a, unix_o, "unix")
# Refusals surface as the SDKs' own errors.
try:
    anthropic.Anthropic(api_key="vt_" + "0" * 64).messages.create(model="claude-test", max_tokens=8, messages=[])
    raise SystemExit("a bad token was accepted")
except anthropic.AuthenticationError as e:
    print("refused", e.status_code, flush=True)
print("ready", flush=True)
sys.stdin.readline()
"#;

/// Every readable mapping of process `pid`'s memory.
fn memory(pid: u32) -> Vec<u8> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut all = Vec::new();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (range, perms) = (fields.next().unwrap(), fields.next().unwrap());
        if !perms.starts_with('r') || line.ends_with("[vvar]") || line.ends_with("[vsyscall]") {
            continue;
        }
        let (start, end) = range.split_once('-').unwrap();
        let (start, end) = (u64::from_str_radix(start, 16).unwrap(), u64::from_str_radix(end, 16).unwrap());
        let mut buf = vec![0; (end - start) as usize];
        if mem.read_exact_at(&mut buf, start).is_ok() {
            all.extend_from_slice(&buf);
        }
    }
    all
}

#[test]
fn the_official_sdks_work_through_the_broker_and_never_hold_the_key() {
    match Command::new("python3").args(["-c", "import anthropic, openai"]).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            let why = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            skip_unless_ci(&format!(
                "python3 cannot import anthropic and openai ({why}); install them: \
                 python3 -m pip install -r tests/python/broker-requirements.txt"
            ));
            return;
        }
        Err(e) => {
            skip_unless_ci(&format!("running python3: {e}"));
            return;
        }
    }
    let s = Setup::new("", "");
    let token = s.client("agent", &["--use", "--allow", "prod/anthropic", "--allow", "prod/openai"]);
    let home = s.d.dir.path().join("agent-home");
    std::fs::create_dir(&home).unwrap();
    let base = format!("http://127.0.0.1:{}", s.port);
    let mut child = Command::new("python3")
        .args(["-c", AGENT])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", &home)
        .env("ANTHROPIC_BASE_URL", format!("{base}/anthropic"))
        .env("ANTHROPIC_API_KEY", &token)
        .env("OPENAI_BASE_URL", format!("{base}/openai/v1"))
        .env("OPENAI_API_KEY", &token)
        .env("BROKER_SOCKET", &s.socket)
        .current_dir(&home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut said = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        said.push(line.clone());
        if line == "ready" {
            break;
        }
    }
    let pid = child.id();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    let memory = if said.last().map(String::as_str) == Some("ready") { memory(pid) } else { Vec::new() };
    child.stdin.take().unwrap().write_all(b"\n").unwrap();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(status.success(), "the agent failed: {said:?}\n{stderr}");
    assert_eq!(said, ["tcp ok", "unix ok", "refused 401", "ready"]);

    // The upstream got the real keys; the agent never held them.
    let k = &s.keys;
    assert!(s.up.seen().iter().any(|r| r.header("x-api-key").as_deref() == Some(&k.anthropic)));
    assert!(s.up.seen().iter().any(|r| r.header("authorization") == Some(format!("Bearer {}", k.openai))));
    assert!(!s.up.saw(token.as_bytes()));
    let in_memory = |needle: &[u8]| memchr::memmem::find(&memory, needle).is_some();
    assert!(in_memory(token.as_bytes()), "the control: the placeholder is in the agent's memory");
    for real in [&k.anthropic, &k.openai] {
        assert!(!contains(&environ, real.as_bytes()), "the key was in the agent's environment");
        assert!(!in_memory(real.as_bytes()), "the key was in the agent's memory");
        for file in files_under(&home) {
            assert!(!contains(&std::fs::read(&file).unwrap(), real.as_bytes()), "{}", file.display());
        }
    }
    let uses = s.requests();
    assert_eq!(uses.iter().filter(|r| r["actor"]["client"] == "agent").count(), 4, "the port's requests");
    let owners = uses.iter().filter(|r| r["actor"]["client"].is_null() && r["actor"]["pid"].is_u64());
    assert_eq!(
        owners.filter(|r| r["detail"]["status"] == 200).count(),
        4,
        "the socket's requests, named by the kernel"
    );
}
