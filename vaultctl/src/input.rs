//! Reading secrets from the operator: passphrases and secret values.
//!
//! They come from a file, stdin, or a prompt that does not echo — never from argv
//! (ARCHITECTURE §9). Input is read into one buffer sized up front, so no reallocation
//! leaves an unwiped copy behind, and its size is checked before vaultd is dialed.

use std::io::{IsTerminal as _, Read};
use std::path::Path;

use anyhow::Context as _;
use vault_proto::MAX_VALUE_LEN;
use zeroize::Zeroizing;

use crate::exit::usage;
use crate::secret::Secret;

/// Whether a prompted passphrase is a new one (typed twice) or an existing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Passphrase {
    New,
    Existing,
}

/// Where vaultctl looks for the vault passphrase when no `--passphrase-file` is
/// given, before prompting: for containers, where neither a file nor a terminal
/// is at hand. The trade-off is in SECURITY.md.
pub(crate) const PASSPHRASE_ENV: &str = "VAULT_PASSPHRASE";

/// The vault passphrase: from `file` (`-` is stdin) with one trailing line ending
/// removed — a file written by `echo` ends with one, and the passphrase does not —
/// else from `$VAULT_PASSPHRASE` (taken as is), else from a no-echo prompt.
pub(crate) fn passphrase(file: Option<&Path>, kind: Passphrase) -> anyhow::Result<Secret> {
    if file.is_none()
        && let Some(value) = std::env::var_os(PASSPHRASE_ENV)
    {
        let passphrase = Secret::new(std::os::unix::ffi::OsStringExt::into_vec(value));
        if passphrase.is_empty() {
            return Err(usage(format!("{PASSPHRASE_ENV} is set but empty")));
        }
        refuse_too_long("passphrase", passphrase.len())?;
        return Ok(passphrase);
    }
    read_passphrase(
        file,
        kind,
        "no passphrase: use --passphrase-file FILE ('-' for stdin) or VAULT_PASSPHRASE when not at a terminal",
    )
}

/// A new passphrase (`rekey`): from `file`, or typed twice at a prompt. Never
/// from the environment, which holds the current one.
pub(crate) fn new_passphrase(file: Option<&Path>) -> anyhow::Result<Secret> {
    read_passphrase(file, Passphrase::New, "no new passphrase: use --new-passphrase-file FILE when not at a terminal")
}

fn read_passphrase(file: Option<&Path>, kind: Passphrase, no_terminal: &str) -> anyhow::Result<Secret> {
    let passphrase = match file {
        Some(path) => {
            let mut bytes = read_path(path, "passphrase")?;
            strip_one_line_ending(&mut bytes);
            Secret::new(std::mem::take(&mut *bytes))
        }
        None => {
            require_terminal(no_terminal)?;
            let prompt = match kind {
                Passphrase::New => "New vault passphrase: ",
                Passphrase::Existing => "Vault passphrase: ",
            };
            let first = prompt_secret(prompt)?;
            if kind == Passphrase::New && !first.is_empty() {
                let again = prompt_secret("Repeat the passphrase: ")?;
                if first.expose() != again.expose() {
                    return Err(usage("the passphrases do not match"));
                }
            }
            first
        }
    };
    if passphrase.is_empty() {
        return Err(usage("passphrase is empty"));
    }
    refuse_too_long("passphrase", passphrase.len())?;
    Ok(passphrase)
}

/// A secret value: from `file` (`-` is stdin), else from stdin when it is not a
/// terminal, else from a no-echo prompt. Files and stdin are taken byte for byte
/// (binary safe, nothing trimmed); a prompted value is the typed line.
///
/// A value of one line that ends with a newline is stored as given, with a
/// warning: it is what `echo "$TOKEN" |` sends, and seldom what was meant
/// (`printf '%s' "$TOKEN" |` sends the token alone).
pub(crate) fn value(file: Option<&Path>, prompt: &str) -> anyhow::Result<Secret> {
    let value = match file {
        Some(path) => Secret::new(std::mem::take(&mut *read_path(path, "value")?)),
        None if !std::io::stdin().is_terminal() => Secret::new(std::mem::take(&mut *read_stdin("value")?)),
        None => prompt_secret(prompt)?,
    };
    if value.is_empty() {
        return Err(usage("value is empty"));
    }
    refuse_too_long("value", value.len())?;
    if one_line_with_newline(value.expose()) {
        eprintln!(
            "vaultctl: warning: the value ends with a newline (as `echo` adds); it is stored with it. \
             To store it without, use printf '%s' \"$VALUE\" | … or a file without the newline."
        );
    }
    Ok(value)
}

/// Text of one line followed by `\n` (or `\r\n`): most likely `echo`'s doing.
fn one_line_with_newline(value: &[u8]) -> bool {
    let body = value.strip_suffix(b"\n").map(|b| b.strip_suffix(b"\r").unwrap_or(b));
    body.is_some_and(|b| !b.is_empty() && !b.contains(&b'\n'))
}

/// The shortest passphrase accepted without `--weak-passphrase`. Argon2 slows
/// each guess; it cannot make a short passphrase a strong one.
pub(crate) const MIN_PASSPHRASE_CHARS: usize = 12;

/// Refuses a new passphrase shorter than [`MIN_PASSPHRASE_CHARS`] unless `weak`
/// is set, and then warns. Never says the passphrase's length.
pub(crate) fn check_strength(passphrase: &Secret, weak: bool) -> anyhow::Result<()> {
    let chars = std::str::from_utf8(passphrase.expose()).map_or(passphrase.len(), |s| s.chars().count());
    if chars >= MIN_PASSPHRASE_CHARS {
        return Ok(());
    }
    if !weak {
        return Err(usage(format!(
            "the passphrase is shorter than {MIN_PASSPHRASE_CHARS} characters: choose a longer one \
             (or accept a weak one with --weak-passphrase)"
        )));
    }
    eprintln!(
        "vaultctl: warning: the passphrase is shorter than {MIN_PASSPHRASE_CHARS} characters, so it is weak; \
         change it with `vaultctl rekey`"
    );
    Ok(())
}

/// Reads a whole file, or stdin for `-`, refusing more than the size limit.
fn read_path(path: &Path, what: &str) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    if path == Path::new("-") {
        return read_stdin(what);
    }
    let cannot = || format!("cannot read {}", path.display());
    let file = std::fs::File::open(path).with_context(cannot)?;
    let (bytes, total) = read_bounded(file).with_context(cannot)?;
    refuse_too_long(what, total)?;
    Ok(bytes)
}

/// Reads all of stdin, refusing more than the size limit.
fn read_stdin(what: &str) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let (bytes, total) = read_bounded(std::io::stdin().lock()).context("cannot read stdin")?;
    refuse_too_long(what, total)?;
    Ok(bytes)
}

/// Reads `reader` to the end and returns the first [`MAX_VALUE_LEN`] bytes and
/// the total length. The bytes go into a buffer allocated once; past the limit
/// the rest is only counted, so the error can say how big the input was without
/// holding it.
fn read_bounded(mut reader: impl Read) -> std::io::Result<(Zeroizing<Vec<u8>>, usize)> {
    let mut kept = Zeroizing::new(Vec::with_capacity(MAX_VALUE_LEN));
    (&mut reader).take(MAX_VALUE_LEN as u64).read_to_end(&mut kept)?;
    let mut scratch = Zeroizing::new([0u8; 8192]);
    let mut total = kept.len();
    loop {
        match reader.read(&mut scratch[..]) {
            Ok(0) => return Ok((kept, total)),
            Ok(n) => total = total.saturating_add(n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn refuse_too_long(what: &str, len: usize) -> anyhow::Result<()> {
    if len > MAX_VALUE_LEN {
        return Err(usage(format!("{what} is {len} bytes; the limit is {MAX_VALUE_LEN} bytes")));
    }
    Ok(())
}

/// Removes one trailing `\n` or `\r\n`, no more: a passphrase may itself end in
/// whitespace, but not in the line ending an editor or `echo` added.
fn strip_one_line_ending(bytes: &mut Vec<u8>) {
    if bytes.ends_with(b"\r\n") {
        bytes.truncate(bytes.len() - 2);
    } else if bytes.ends_with(b"\n") {
        bytes.truncate(bytes.len() - 1);
    }
}

/// Prompting needs a person at a terminal. Without one (a script, a service, a
/// test harness) say what to do instead of waiting forever for input.
fn require_terminal(hint: &str) -> anyhow::Result<()> {
    if std::io::stdin().is_terminal() { Ok(()) } else { Err(usage(hint)) }
}

/// One line typed at the terminal without echo, line ending removed.
fn prompt_secret(prompt: &str) -> anyhow::Result<Secret> {
    let mut typed = Zeroizing::new(rpassword::prompt_password(prompt).context("cannot read from the terminal")?);
    Ok(Secret::new(std::mem::take(&mut *typed).into_bytes()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn stripped(input: &[u8]) -> Vec<u8> {
        let mut bytes = input.to_vec();
        strip_one_line_ending(&mut bytes);
        bytes
    }

    #[test]
    fn strips_exactly_one_line_ending() {
        let cases: [(&[u8], &[u8]); 9] = [
            (b"hunter2\n", b"hunter2"),
            (b"hunter2\r\n", b"hunter2"),
            (b"hunter2", b"hunter2"),
            (b"hunter2\n\n", b"hunter2\n"),
            (b"hunter2\r\n\r\n", b"hunter2\r\n"),
            (b"hunter2 \n", b"hunter2 "),
            (b"hunter2\r", b"hunter2\r"),
            (b"\n", b""),
            (b"", b""),
        ];
        for (input, want) in cases {
            assert_eq!(stripped(input), want, "{input:?}");
        }
    }

    #[test]
    fn passphrase_file_strips_one_newline_and_refuses_empty() {
        let dir = std::env::temp_dir().join(format!("vaultctl-input-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pass");

        std::fs::write(&path, b"correct horse\n").unwrap();
        let p = passphrase(Some(&path), Passphrase::Existing).unwrap();
        assert_eq!(p.expose(), b"correct horse");

        std::fs::write(&path, b"\r\n").unwrap();
        let err = passphrase(Some(&path), Passphrase::New).err().unwrap();
        assert_eq!(err.to_string(), "passphrase is empty");

        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_newline_is_warned_about_only_after_one_line_of_text() {
        for (value, warn) in [
            (&b"tok\n"[..], true),
            (b"tok\r\n", true),
            (b"tok", false),
            (b"\n", false),
            (b"a\nb\n", false),
            (b"-----BEGIN KEY-----\nabc\n-----END KEY-----\n", false),
        ] {
            assert_eq!(one_line_with_newline(value), warn, "{value:?}");
        }
    }

    #[test]
    fn short_passphrases_need_weak_passphrase() {
        let short = Secret::new(b"hunter2".to_vec());
        let err = check_strength(&short, false).err().unwrap().to_string();
        assert!(err.contains("shorter than 12") && !err.contains("hunter2"), "{err}");
        assert!(check_strength(&short, true).is_ok());
        assert!(
            check_strength(&Secret::new("ééééééééééé€".as_bytes().to_vec()), false).is_ok(),
            "characters, not bytes"
        );
        assert!(check_strength(&Secret::new(b"correct horse".to_vec()), false).is_ok());
    }

    #[test]
    fn values_are_read_byte_for_byte() {
        let input = b"\x00\xff tok\r\n\n".to_vec();
        let (read, total) = read_bounded(&input[..]).unwrap();
        assert_eq!(&read[..], &input[..]);
        assert_eq!(total, input.len());
    }

    #[test]
    fn oversized_input_is_refused_with_its_size() {
        let at_limit = vec![b'a'; MAX_VALUE_LEN];
        let (kept, total) = read_bounded(&at_limit[..]).unwrap();
        assert_eq!((kept.len(), total), (MAX_VALUE_LEN, MAX_VALUE_LEN));
        assert!(refuse_too_long("value", total).is_ok());

        let over = vec![b'a'; MAX_VALUE_LEN + 10_000];
        let (kept, total) = read_bounded(&over[..]).unwrap();
        assert_eq!((kept.len(), total), (MAX_VALUE_LEN, MAX_VALUE_LEN + 10_000));
        let err = refuse_too_long("value", total).err().unwrap();
        assert_eq!(err.to_string(), "value is 75536 bytes; the limit is 65536 bytes");
    }
}
