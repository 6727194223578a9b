//! Secret names and environments: `[a-z0-9][a-z0-9_.-]{0,127}` (DESIGN §4).
//!
//! Both vaultctl (for an error before dialing) and vaultd (the authority) use this.

/// The environment used when none is given.
pub const DEFAULT_ENV: &str = "default";

/// The longest name or environment.
pub const MAX_NAME_LEN: usize = 128;

/// Why a name was refused. The message quotes the rule, not the input, so a value
/// pasted by mistake in place of a name is not echoed back into a log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameError {
    Empty,
    TooLong,
    BadFirstChar,
    BadChar,
    NoSlash,
}

impl std::fmt::Display for NameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NameError::Empty => "is empty",
            NameError::TooLong => "is longer than 128 characters",
            NameError::BadFirstChar => "must start with a-z or 0-9",
            NameError::BadChar => "may contain only a-z, 0-9, '_', '.' and '-'",
            NameError::NoSlash => "must be ENV/NAME (with `*` for any characters)",
        })
    }
}

impl std::error::Error for NameError {}

/// Checks a secret name or environment against the naming rule.
pub fn validate(name: &str) -> Result<(), NameError> {
    let bytes = name.as_bytes();
    let first = *bytes.first().ok_or(NameError::Empty)?;
    if bytes.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong);
    }
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err(NameError::BadFirstChar);
    }
    let ok = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-');
    if !bytes.iter().all(ok) {
        return Err(NameError::BadChar);
    }
    Ok(())
}

/// Checks a grant pattern: `ENV/NAME`, each part a name in which `*` stands for
/// any run of characters (`prod/telegram`, `prod/*`, `*/openai`, `*/*`).
pub fn validate_pattern(pattern: &str) -> Result<(), NameError> {
    let (env, name) = pattern.split_once('/').ok_or(NameError::NoSlash)?;
    for part in [env, name] {
        if part.is_empty() {
            return Err(NameError::Empty);
        }
        if part.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong);
        }
        let ok = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-' | b'*');
        if !part.bytes().all(|b| ok(&b)) {
            return Err(NameError::BadChar);
        }
    }
    Ok(())
}

/// Whether `pattern` (checked by [`validate_pattern`]) matches `env/name`.
pub fn pattern_matches(pattern: &str, env: &str, name: &str) -> bool {
    let Some((penv, pname)) = pattern.split_once('/') else { return false };
    glob(penv.as_bytes(), env.as_bytes()) && glob(pname.as_bytes(), name.as_bytes())
}

/// `*` matches any run of bytes; everything else matches itself.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|skip| glob(rest, &text[skip..])),
        Some((c, rest)) => text.split_first().is_some_and(|(t, tail)| t == c && glob(rest, tail)),
    }
}

/// The environment to use: the given one, or [`DEFAULT_ENV`] when empty.
pub fn env_or_default(env: &str) -> &str {
    if env.is_empty() { DEFAULT_ENV } else { env }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_env_and_name_separately() {
        let cases = [
            ("prod/telegram", "prod", "telegram", true),
            ("prod/telegram", "prod", "telegram2", false),
            ("prod/*", "prod", "anything", true),
            ("prod/*", "staging", "telegram", false),
            ("*/openai", "staging", "openai", true),
            ("*/*", "a", "b", true),
            ("prod/tele*", "prod", "telegram", true),
            ("prod/*gram", "prod", "telegram", true),
            ("prod/t*m", "prod", "tm", true),
            ("prod/t*m", "prod", "tx", false),
            // `*` never crosses the slash: "prod/x" is not matched by "*" in env alone.
            ("*/x", "prod", "y/x", false),
        ];
        for (pattern, env, name, want) in cases {
            assert_eq!(validate_pattern(pattern), Ok(()), "{pattern}");
            assert_eq!(pattern_matches(pattern, env, name), want, "{pattern} vs {env}/{name}");
        }
        for bad in ["telegram", "prod/", "/x", "Prod/x", "prod/a b", "a/b/c"] {
            assert!(validate_pattern(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn accepts_the_documented_alphabet() {
        for ok in ["telegram", "prod", "a", "0", "openai.key-2_b", &"a".repeat(128)] {
            assert_eq!(validate(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn refuses_everything_else() {
        let cases = [
            ("", NameError::Empty),
            (&*"a".repeat(129), NameError::TooLong),
            ("-x", NameError::BadFirstChar),
            ("_x", NameError::BadFirstChar),
            ("Telegram", NameError::BadFirstChar),
            ("tele gram", NameError::BadChar),
            ("prod/telegram", NameError::BadChar),
            ("café", NameError::BadChar),
            ("a\0b", NameError::BadChar),
        ];
        for (name, want) in cases {
            assert_eq!(validate(name), Err(want), "{name:?}");
        }
    }
}
