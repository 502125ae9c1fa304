//! Every byte a command prints goes through here, so a closed stdout or stderr is handled once
//! for all commands instead of panicking in `print!` (which exits 101 with a backtrace).
//!
//! `kefu rules check | head -1` closes the pipe after one line. Rust ignores SIGPIPE, so the
//! next write fails with `BrokenPipe`; [`write`](fn@write) turns that into [`CmdError::StdoutClosed`],
//! which [`crate::cli::run`] ends with exit code 141 (128 + SIGPIPE, what a shell reports for
//! a Unix tool killed by SIGPIPE) and no message: the reader asked for nothing more. Any other
//! write error (a full disk behind a redirect) is a failure with its cause (exit 1).
//!
//! Messages for stderr ([`note`]) are best effort: when stderr is gone there is nobody left to
//! tell, so the error is dropped rather than turned into a panic.

use std::fmt;
use std::io::{self, Write};

use super::common::CmdError;

/// Writes formatted text to stdout (locked, flushed at once so a closed pipe shows up here
/// and not at exit). Use through [`outln!`](crate::outln) and [`out!`](crate::out).
pub fn write(args: fmt::Arguments<'_>) -> Result<(), CmdError> {
    let mut stdout = io::stdout().lock();
    stdout.write_fmt(args).and_then(|()| stdout.flush()).map_err(stdout_error)
}

/// Writes raw bytes to stdout (a generated completion script).
pub fn write_bytes(bytes: &[u8]) -> Result<(), CmdError> {
    let mut stdout = io::stdout().lock();
    stdout.write_all(bytes).and_then(|()| stdout.flush()).map_err(stdout_error)
}

fn stdout_error(e: io::Error) -> CmdError {
    if e.kind() == io::ErrorKind::BrokenPipe {
        CmdError::StdoutClosed
    } else {
        CmdError::failed(format!("cannot write to stdout: {e}"))
    }
}

/// Writes one line to stderr, ignoring a closed or failing stderr (see the module header).
/// Use through [`errln!`](crate::errln).
pub fn note(args: fmt::Arguments<'_>) {
    let mut stderr = io::stderr().lock();
    let _ = stderr.write_fmt(args).and_then(|()| stderr.write_all(b"\n"));
}

/// `println!` for commands: `outln!(...)?` writes a line to stdout and returns
/// [`CmdError::StdoutClosed`] when the reader is gone.
#[macro_export]
macro_rules! outln {
    () => {
        $crate::cmd::out::write(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cmd::out::write(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` for commands (no newline added); see [`outln!`].
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cmd::out::write(format_args!($($arg)*))
    };
}

/// `eprintln!` that never panics: a line on stderr, dropped if stderr is closed.
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::cmd::out::note(format_args!($($arg)*))
    };
}
