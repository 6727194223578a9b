//! What is on disk: no plaintext anywhere in the data dir, and ciphertexts that
//! refuse to decrypt when edited, swapped or replayed into another row.
#![allow(clippy::unwrap_used)]

use vault_tests::{Daemon, PASSPHRASE, contains, files_under, unique_tag};

/// Asserts no file under the data dir holds any of `needles`; returns the files read.
#[track_caller]
fn assert_absent_from_data_dir(d: &Daemon, needles: &[&[u8]], when: &str) -> Vec<String> {
    let files = files_under(&d.data_dir);
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        for needle in needles {
            assert!(
                !contains(&bytes, needle),
                "{when}: {} holds {:?}",
                file.display(),
                String::from_utf8_lossy(needle)
            );
        }
    }
    files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect()
}

#[test]
fn no_plaintext_value_or_passphrase_at_rest() {
    let mut d = Daemon::initialized();
    let tag = unique_tag();
    let value = format!("sk-ant-PLAINTEXT-CANARY-{tag}");
    let old_value = format!("old-PLAINTEXT-CANARY-{tag}");
    let deleted = format!("deleted-PLAINTEXT-CANARY-{tag}");
    d.put("anthropic", old_value.as_bytes());
    d.put("anthropic", value.as_bytes());
    d.put("doomed", deleted.as_bytes());
    d.ctl(&["rm", "doomed"], b"").ok();
    d.ctl(&["--env", "prod", "put", "anthropic"], value.as_bytes()).ok();
    assert_eq!(d.get("anthropic"), value.as_bytes());

    let needles: [&[u8]; 4] = [value.as_bytes(), old_value.as_bytes(), deleted.as_bytes(), PASSPHRASE];
    // While running, recent writes sit in the WAL.
    let files = assert_absent_from_data_dir(&d, &needles, "while running");
    assert!(files.contains(&"vault.db-wal".to_owned()), "expected a WAL while running: {files:?}");
    assert!(std::fs::metadata(d.data_dir.join("vault.db-wal")).unwrap().len() > 0, "the WAL should have content");

    let stopped = d.stop();
    assert!(stopped.status.success(), "{}", stopped.log);
    let files = assert_absent_from_data_dir(&d, &needles, "after stop");
    assert!(files.contains(&"vault.db".to_owned()), "{files:?}");

    // The check above is only meaningful if the data is really there: it decrypts.
    d.launch();
    d.unlock();
    assert_eq!(d.get("anthropic"), value.as_bytes());
}

/// The current version's ciphertext of `default/NAME`.
fn ciphertext(d: &Daemon, name: &str) -> Vec<u8> {
    d.db()
        .query_row(
            "SELECT v.ciphertext FROM secret s JOIN secret_version v
               ON v.secret_id = s.id AND v.version = s.current_version
             WHERE s.env = 'default' AND s.name = ?",
            [name],
            |r| r.get(0),
        )
        .unwrap()
}

fn set_ciphertext(d: &Daemon, name: &str, bytes: &[u8]) {
    let changed = d
        .db()
        .execute(
            "UPDATE secret_version SET ciphertext = ?1
             WHERE (secret_id, version) = (SELECT id, current_version FROM secret WHERE env = 'default' AND name = ?2)",
            rusqlite::params![bytes, name],
        )
        .unwrap();
    assert_eq!(changed, 1);
}

/// Asserts that an edit of `name`'s stored rows is not acted on while vaultd
/// runs (it serves what it verified, `serving`), and that once vaultd loads the
/// file again (seal, unlock) reading it fails, naming it, on the agent socket
/// (`get`) and the admin socket (`show --reveal`), and nothing is served.
#[track_caller]
fn assert_refused_after_unlock(d: &Daemon, edited: &[(&str, &[u8])], what: &str) {
    for (name, serving) in edited {
        assert_eq!(d.get(name), *serving, "{what}: an edit while running is not acted on");
    }
    d.ctl(&["seal"], b"").ok();
    d.unlock();
    for (name, _) in edited {
        for args in [&["get", name][..], &["show", "--reveal", name]] {
            let out = d.ctl(args, b"");
            let message = out.error(1);
            assert!(message.contains(&format!("secret default/{name} is quarantined")), "{what}: {args:?}: {message}");
        }
    }
}

#[test]
fn a_flipped_byte_anywhere_fails_with_one_opaque_error() {
    let mut d = Daemon::initialized();
    d.put("telegram", b"123:telegram-token");
    d.put("anthropic", b"sk-ant-untouched");
    let original = ciphertext(&d, "telegram");
    // format (1) || key term (4, big endian) || nonce (12) || body || tag (16)
    let len = original.len();
    assert_eq!(len, 1 + 4 + 12 + b"123:telegram-token".len() + 16, "the documented layout");
    let positions = [
        (0, "format byte"),
        (1, "key term, high byte"),
        (4, "key term, low byte"),
        (5, "nonce, first byte"),
        (16, "nonce, last byte"),
        (17, "body, first byte"),
        (len - 17, "body, last byte"),
        (len - 16, "tag, first byte"),
        (len - 1, "tag, last byte"),
    ];
    for (pos, what) in positions {
        let mut bad = original.clone();
        bad[pos] ^= 0x01;
        set_ciphertext(&d, "telegram", &bad);
        assert_refused_after_unlock(&d, &[("telegram", b"123:telegram-token")], what);
        assert_eq!(d.get("anthropic"), b"sk-ant-untouched", "{what}: other secrets still read");
        // Put back as it was, it verifies again.
        set_ciphertext(&d, "telegram", &original);
        d.ctl(&["seal"], b"").ok();
        d.unlock();
    }
    let truncations: [(&[u8], &str); 4] = [
        (&original[..len - 1], "one byte short"),
        (&original[..17], "header and nonce only"),
        (&original[..1], "format byte only"),
        (b"", "empty"),
    ];
    for (bad, what) in truncations {
        set_ciphertext(&d, "telegram", bad);
        assert_refused_after_unlock(&d, &[("telegram", b"123:telegram-token")], what);
        set_ciphertext(&d, "telegram", &original);
        d.ctl(&["seal"], b"").ok();
        d.unlock();
    }

    assert_eq!(d.get("telegram"), b"123:telegram-token", "the restored ciphertext reads again");
    d.assert_running();
    assert_eq!(d.status()["sealed"], false);
    assert!(!d.log().contains("123:telegram-token"), "the value must not reach the log");
}

#[test]
fn swapped_or_replayed_ciphertexts_do_not_decrypt() {
    let mut d = Daemon::initialized();
    d.put("telegram", b"telegram-token");
    d.put("discord", b"discord-token");
    d.put("rotated", b"old-value");
    d.put("rotated", b"new-value");
    d.put("untouched", b"still-fine");
    let (telegram, discord) = (ciphertext(&d, "telegram"), ciphertext(&d, "discord"));

    // Swap two secrets' ciphertexts: both fail, neither shows the other's value.
    set_ciphertext(&d, "telegram", &discord);
    set_ciphertext(&d, "discord", &telegram);
    assert_refused_after_unlock(&d, &[("telegram", b"telegram-token"), ("discord", b"discord-token")], "swapped");
    assert_eq!(d.get("untouched"), b"still-fine");

    // Replay version 1's ciphertext as version 2 of the same secret.
    let v1: Vec<u8> = d
        .db()
        .query_row(
            "SELECT ciphertext FROM secret_version
             WHERE secret_id = (SELECT id FROM secret WHERE name = 'rotated') AND version = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    set_ciphertext(&d, "rotated", &v1);
    assert_refused_after_unlock(&d, &[("rotated", b"new-value")], "version 1 replayed as version 2");

    // Move a secret to another environment by editing its row: its MAC (and its
    // ciphertext) are bound to the old one.
    d.db().execute("UPDATE secret SET env = 'staging' WHERE name = 'untouched'", []).unwrap();
    d.ctl(&["seal"], b"").ok();
    d.unlock();
    let out = d.ctl(&["--env", "staging", "get", "untouched"], b"");
    assert!(out.error(1).contains("secret staging/untouched is quarantined"), "moved to another environment");

    set_ciphertext(&d, "telegram", &telegram);
    set_ciphertext(&d, "discord", &discord);
    d.ctl(&["seal"], b"").ok();
    d.unlock();
    assert_eq!(d.get("telegram"), b"telegram-token");
    assert_eq!(d.get("discord"), b"discord-token");
    d.assert_running();
}

#[test]
fn a_doctored_kdf_header_is_refused_at_unlock() {
    // The header is untrusted input: parameters below the floor would make the
    // passphrase cheap to guess; above the ceiling, unlock would exhaust memory.
    let mut d = Daemon::initialized();
    d.put("telegram", b"token");
    d.restart();
    let read = |d: &Daemon| -> (u32, u32, u32) {
        d.db()
            .query_row("SELECT kdf_memory_kib, kdf_iterations, kdf_parallelism FROM vault_header", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap()
    };
    let write = |d: &Daemon, (m, t, p): (u32, u32, u32)| {
        d.db()
            .execute(
                "UPDATE vault_header SET kdf_memory_kib = ?, kdf_iterations = ?, kdf_parallelism = ?",
                rusqlite::params![m, t, p],
            )
            .unwrap();
    };
    let original = read(&d);
    let cases = [
        ((8, 1, 1), "below the minimum"),
        ((64, 1, 2), "below the minimum"),
        ((19 * 1024, 1, 1), "below the minimum"),
        ((u32::MAX, 3, 4), "above the maximum"),
        ((64 * 1024, 10_000, 4), "above the maximum"),
        ((64 * 1024, 3, 255), "above the maximum"),
    ];
    for (params, want) in cases {
        write(&d, params);
        let out = d.ctl(&["unlock", "--passphrase-file", "-"], PASSPHRASE);
        let message = out.error(1);
        assert!(message.contains(want), "{params:?}: {message}");
        assert_eq!(d.status()["sealed"], true, "{params:?}");
    }
    write(&d, original);
    d.unlock();
    assert_eq!(d.get("telegram"), b"token");
}
