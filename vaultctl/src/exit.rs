//! How vaultctl ends: the documented exit codes, and the one place that turns an
//! error into a message and a code, so ops scripts can branch on the outcome.

use std::io::Write as _;
use std::process::ExitCode;

use crate::daemon::{RpcError, Unreachable};

/// Success.
pub(crate) const OK: u8 = 0;
/// Any other failure, including a stored record that failed to decrypt.
pub(crate) const ERROR: u8 = 1;
/// Bad command line or bad input (clap's own errors use 2 as well).
pub(crate) const USAGE: u8 = 2;
/// The secret does not exist, or the caller may not have it.
pub(crate) const NOT_FOUND: u8 = 3;
/// The vault is sealed or not initialized.
pub(crate) const SEALED: u8 = 4;
/// vaultd could not be reached.
pub(crate) const UNREACHABLE: u8 = 5;

/// The exit-code table shown at the end of `vaultctl --help`. Kept beside the
/// constants; a test checks the two agree.
pub(crate) const HELP: &str = "\
Exit status:
  0  success
  1  error
  2  usage error or invalid input
  3  not found, or permission denied
  4  vault is sealed or not initialized
  5  vaultd is unreachable";

/// A mistake the operator fixes by changing the command line or its input.
/// Messages never quote the input: it may be a secret pasted in the wrong place.
#[derive(Debug)]
pub(crate) struct UsageError(String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// A usage error (exit 2) with the given message.
pub(crate) fn usage(message: impl Into<String>) -> anyhow::Error {
    UsageError(message.into()).into()
}

/// `vaultctl exec`'s command ended with this status: vaultctl exits with it too,
/// and prints nothing (the command said what it had to say).
#[derive(Debug)]
pub(crate) struct ChildExit(pub(crate) u8);

impl std::fmt::Display for ChildExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the command exited with status {}", self.0)
    }
}

impl std::error::Error for ChildExit {}

/// Prints `err` once, on one line, and returns its exit code. The only place
/// vaultctl reports a failure.
pub(crate) fn report(err: &anyhow::Error) -> ExitCode {
    if let Some(ChildExit(code)) = err.downcast_ref::<ChildExit>() {
        return ExitCode::from(*code);
    }
    let message = one_line(&format!("{err:#}"));
    // Nowhere left to report a failure to write to stderr.
    let _ = writeln!(std::io::stderr(), "vaultctl: {message}");
    ExitCode::from(code_of(err))
}

/// Ends on a command-line error: `--help` and `--version` print as clap renders
/// them (exit 0); a usage error becomes one line, `vaultctl: …`, exit 2, like
/// every other error (the full usage is one `--help` away).
pub(crate) fn clap_error(err: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(err.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = err.print();
        return ExitCode::from(OK);
    }
    if err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        let _ = err.print();
        return ExitCode::from(USAGE);
    }
    // The message is the first paragraph (clap puts the missing argument's name on
    // its own line); the usage that follows it, and tips that repeat the input,
    // are left to --help.
    let text = err.render().to_string();
    let message = text.split("\n\n").next().unwrap_or("invalid arguments");
    let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    let args: Vec<String> = std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect();
    let message = unquote_arguments(message, &args, &known_words());
    let _ = writeln!(std::io::stderr(), "vaultctl: {} (see --help)", one_line(&message));
    ExitCode::from(USAGE)
}

/// Replaces each argument that clap quotes back (`'sk-proj-…'`) with its position
/// and length: an argument in the wrong place may be a secret (`vaultctl put
/// openai sk-proj-…`), and a usage error must not copy it to a terminal, a log or
/// CI output. Only the command's own words (subcommands, options) are kept.
fn unquote_arguments(message: &str, args: &[String], known: &[String]) -> String {
    let mut message = message.to_owned();
    for (i, arg) in args.iter().enumerate().skip(1) {
        // `--opt=VALUE`: clap quotes VALUE alone.
        let value = arg.strip_prefix("--").and_then(|a| a.split_once('=')).map(|(_, v)| v);
        for text in [Some(arg.as_str()), value].into_iter().flatten() {
            if known.iter().any(|k| k == text) {
                continue;
            }
            let quoted = format!("'{text}'");
            if message.contains(&quoted) {
                let shown = format!("#{i} ({} characters)", text.chars().count());
                message = message.replace(&quoted, &shown);
            }
        }
    }
    message
}

/// Every subcommand name and option (`put`, `--json`, `-o`) of vaultctl: words
/// that are safe to quote back.
fn known_words() -> Vec<String> {
    fn walk(cmd: &clap::Command, out: &mut Vec<String>) {
        out.push(cmd.get_name().to_owned());
        for arg in cmd.get_arguments() {
            out.extend(arg.get_long().map(|l| format!("--{l}")));
            out.extend(arg.get_short().map(|s| format!("-{s}")));
        }
        for sub in cmd.get_subcommands() {
            walk(sub, out);
        }
    }
    let mut words = vec!["--help".to_owned(), "-h".to_owned(), "--version".to_owned(), "-V".to_owned()];
    walk(&<crate::Cli as clap::CommandFactory>::command(), &mut words);
    words
}

/// The exit code for an error: the first cause in its chain that we recognise.
fn code_of(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.is::<UsageError>() {
            return USAGE;
        }
        if let Some(rpc) = cause.downcast_ref::<RpcError>() {
            return code_for_status(rpc.code());
        }
        if cause.is::<Unreachable>() {
            return UNREACHABLE;
        }
        // Offline checks (backup verify): a wrong passphrase is "denied", as on unlock.
        if let Some(vaultd::backup::BackupError::WrongPassphrase) = cause.downcast_ref() {
            return NOT_FOUND;
        }
    }
    ERROR
}

/// The one mapping from a gRPC status code to an exit code. vaultd uses
/// FAILED_PRECONDITION for exactly "sealed" and "not initialized".
fn code_for_status(code: tonic::Code) -> u8 {
    use tonic::Code;
    match code {
        Code::InvalidArgument => USAGE,
        Code::NotFound | Code::PermissionDenied | Code::Unauthenticated => NOT_FOUND,
        Code::FailedPrecondition => SEALED,
        Code::Unavailable => UNREACHABLE,
        _ => ERROR,
    }
}

/// Control characters (a newline in a daemon's message, an escape sequence) would
/// break the one-line contract or drive the terminal; show them as spaces.
fn one_line(message: &str) -> String {
    message.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tonic::{Code, Status};

    fn rpc(code: Code) -> anyhow::Error {
        RpcError::from(Status::new(code, "msg")).into()
    }

    #[test]
    fn status_codes_map_to_documented_exit_codes() {
        let table = [
            (Code::InvalidArgument, USAGE),
            (Code::NotFound, NOT_FOUND),
            (Code::PermissionDenied, NOT_FOUND),
            (Code::Unauthenticated, NOT_FOUND),
            (Code::FailedPrecondition, SEALED),
            (Code::Unavailable, UNREACHABLE),
            (Code::DataLoss, ERROR),
            (Code::Internal, ERROR),
            (Code::AlreadyExists, ERROR),
            (Code::ResourceExhausted, ERROR),
            (Code::Unknown, ERROR),
            (Code::Ok, ERROR),
        ];
        for (code, want) in table {
            assert_eq!(code_of(&rpc(code)), want, "{code:?}");
        }
    }

    #[test]
    fn the_code_survives_added_context() {
        let err = rpc(Code::FailedPrecondition).context("while putting");
        assert_eq!(code_of(&err), SEALED);
        let err = usage("invalid secret name: is empty").context("outer");
        assert_eq!(code_of(&err), USAGE);
        assert_eq!(code_of(&anyhow::anyhow!("anything else")), ERROR);
    }

    #[test]
    fn an_rpc_error_prints_the_message_only() {
        let err = rpc(Code::FailedPrecondition);
        assert_eq!(format!("{err:#}"), "msg");
        let empty: anyhow::Error = RpcError::from(Status::new(Code::NotFound, "")).into();
        assert_eq!(format!("{empty:#}"), Code::NotFound.description());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_unreachable_daemon_is_exit_5_with_the_root_cause() {
        let global = crate::Global {
            socket: "/nonexistent/agent.sock".into(),
            admin_socket: "/nonexistent/admin.sock".into(),
            env: "default".into(),
            json: false,
        };
        let err = crate::daemon::admin(&global).await.err().unwrap();
        assert_eq!(code_of(&err), UNREACHABLE);
        assert_eq!(
            format!("{err:#}"),
            "cannot reach vaultd at /nonexistent/admin.sock: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn usage_errors_show_where_an_argument_is_not_what_it_says() {
        let args: Vec<String> =
            ["vaultctl", "put", "openai", "sk-proj-abc", "--on-rotate=sk-x"].iter().map(|s| (*s).to_owned()).collect();
        let known = known_words();
        let message = "unexpected argument 'sk-proj-abc' found; invalid value 'sk-x' for '--on-rotate <ACTION>'";
        assert_eq!(
            unquote_arguments(message, &args, &known),
            "unexpected argument #3 (11 characters) found; invalid value #4 (4 characters) for '--on-rotate <ACTION>'"
        );
        let conflict = "the argument '--all' cannot be used with 'put'";
        let args: Vec<String> = ["vaultctl", "--all", "put"].iter().map(|s| (*s).to_owned()).collect();
        assert_eq!(unquote_arguments(conflict, &args, &known), conflict, "the command's own words stay");
    }

    #[test]
    fn messages_are_one_line() {
        assert_eq!(one_line("a\nb\r\x1b[31mc"), "a b  [31mc");
    }

    #[test]
    fn help_lists_every_code() {
        for code in [OK, ERROR, USAGE, NOT_FOUND, SEALED, UNREACHABLE] {
            assert!(HELP.contains(&format!("\n  {code}  ")), "{code}");
        }
    }
}
