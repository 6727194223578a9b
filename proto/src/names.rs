//! Secret names, environments and client names: `[A-Za-z0-9][A-Za-z0-9_.-]{0,127}`
//! (ARCHITECTURE §4) in one case, upper or lower, not both; case-sensitive.
//!
//! Upper case is allowed so that the names agents already use (`OPENAI_API_KEY`,
//! from a `.env` file) are secret names as they are, and `vaultctl run` can hand
//! a secret to a program under its own name; [`env_var`] is the documented rule
//! for the names that are not environment-variable names (`telegram-bot-token`).
//! Mixing cases is refused: names do not (`OPENAI_API_KEY`, `telegram`), keys
//! mostly do (`sk-proj-3fA9xQ…`), so a key pasted where a name goes is refused as
//! a name, never stored, listed or quoted back as one.
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
    /// The 1-based position of the first character not allowed.
    BadChar(usize),
    MixedCase,
    NoSlash,
}

impl std::fmt::Display for NameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NameError::Empty => f.write_str("is empty"),
            NameError::TooLong => f.write_str("is longer than 128 characters"),
            NameError::BadFirstChar => f.write_str("must start with a letter or a digit (A-Z, a-z, 0-9)"),
            NameError::BadChar(at) => {
                write!(f, "has a character not allowed at position {at}: use only A-Z, a-z, 0-9, '_', '.' and '-'")
            }
            NameError::MixedCase => {
                f.write_str("mixes upper and lower case: use one (OPENAI_API_KEY or openai_api_key)")
            }
            NameError::NoSlash => f.write_str("must be ENV/NAME (with `*` for any characters)"),
        }
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
    if !first.is_ascii_alphanumeric() {
        return Err(NameError::BadFirstChar);
    }
    first_bad(bytes, |b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))?;
    one_case(bytes)
}

/// Refuses upper and lower case letters together.
fn one_case(bytes: &[u8]) -> Result<(), NameError> {
    let upper = bytes.iter().any(u8::is_ascii_uppercase);
    let lower = bytes.iter().any(u8::is_ascii_lowercase);
    if upper && lower { Err(NameError::MixedCase) } else { Ok(()) }
}

/// `Err(BadChar(position))` for the first byte `ok` refuses.
fn first_bad(bytes: &[u8], ok: impl Fn(u8) -> bool) -> Result<(), NameError> {
    match bytes.iter().position(|&b| !ok(b)) {
        Some(i) => Err(NameError::BadChar(i + 1)),
        None => Ok(()),
    }
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
        first_bad(part.as_bytes(), |b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'*'))?;
        one_case(part.as_bytes())?;
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

/// The environment variable a secret is given as by `vaultctl run`: the name
/// itself when it is one (`OPENAI_API_KEY`, `telegram`), else the name in upper
/// case with each '.' and '-' made '_' (`telegram-bot-token` → `TELEGRAM_BOT_TOKEN`).
/// A name starting with a digit has no variable (`None`).
pub fn env_var(name: &str) -> Option<String> {
    if is_env_var(name) {
        return Some(name.to_owned());
    }
    let var: String = name.chars().map(|c| if matches!(c, '.' | '-') { '_' } else { c.to_ascii_uppercase() }).collect();
    is_env_var(&var).then_some(var)
}

/// Whether `text` is a portable environment-variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_env_var(text: &str) -> bool {
    text.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
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
        assert!(pattern_matches("prod/OPENAI_*", "prod", "OPENAI_API_KEY"));
        assert!(!pattern_matches("prod/openai*", "prod", "OPENAI_API_KEY"), "names are case-sensitive");
        for bad in ["telegram", "prod/", "/x", "Prod/x", "prod/a b", "a/b/c"] {
            assert!(validate_pattern(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn accepts_the_documented_alphabet() {
        for ok in ["telegram", "prod", "a", "0", "openai.key-2_b", "OPENAI_API_KEY", "PROD", "V2", &"a".repeat(128)] {
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
            ("é", NameError::BadFirstChar),
            ("Telegram", NameError::MixedCase),
            ("sk-proj-3fA9xQ2mZ7Lw0pRt", NameError::MixedCase),
            ("tele gram", NameError::BadChar(5)),
            ("prod/telegram", NameError::BadChar(5)),
            ("café", NameError::BadChar(4)),
            ("a\0b", NameError::BadChar(2)),
        ];
        for (name, want) in cases {
            assert_eq!(validate(name), Err(want), "{name:?}");
        }
        let message = NameError::BadChar(5).to_string();
        assert_eq!(message, "has a character not allowed at position 5: use only A-Z, a-z, 0-9, '_', '.' and '-'");
    }

    #[test]
    fn env_vars_are_the_name_or_its_documented_mapping() {
        let cases = [
            ("OPENAI_API_KEY", Some("OPENAI_API_KEY")),
            ("telegram", Some("telegram")),
            ("telegram-bot-token", Some("TELEGRAM_BOT_TOKEN")),
            ("openai.key", Some("OPENAI_KEY")),
            ("9lives", None),
        ];
        for (name, want) in cases {
            assert_eq!(env_var(name).as_deref(), want, "{name}");
        }
    }
}
