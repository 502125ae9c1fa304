//! The README check (issue 13, item 13): every command README.md shows is either run here against
//! the built `kefu`, or is one of CI's own commands, or is a synopsis whose subcommands some named
//! test runs — so no command in the README can rot unnoticed. The rules, also stated in README's
//! Development section:
//!
//! * **Code blocks** tagged `sh` (or `bash`, `shell`, `console`): every line is a command (blank
//!   lines and `#` comments aside, `\` continues a line, `&&` / `;` separate commands, `NAME=value`
//!   before a command is its environment). Each one
//!   must be `kefu ARGS`, `cargo run [CARGO FLAGS] -- ARGS` (run as `kefu ARGS`), or one of CI's own
//!   commands ([`CI_OWN`], which must appear in `.ci/run` and are not re-run here). Anything else
//!   fails the check, naming the README line.
//! * **Inline code** starting with `kefu ` or `cargo run`: an *example* (arguments and no
//!   placeholder) is run like a block command; a *synopsis* (a placeholder such as `OPENID`,
//!   `[--out PATH]`, `<your openid>`, `a | b`) or a bare *name* (`kefu rules check`) is not run, but
//!   every subcommand it names must exist.
//! * **Coverage:** every subcommand of the CLI (so everything a synopsis can name) is run by a
//!   README command or by a test listed in [`COVERED_ELSEWHERE`], whose source must exist and name
//!   the subcommand's words.
//!
//! Commands run in README order in one session, from a scratch copy of the repository root (its
//! top-level files, `rules/`, and the files in `tests/fixtures/readme/`, which hold what a README
//! command reads that the repository does not have, like the `autoreply.json` an operator would
//! fetch). `serve` starts in the background on a free port (`KEFU_SERVER_LISTEN=127.0.0.1:0`) and
//! must answer `/healthz`; a `push` goes to that server (its `--url` authority rewritten, the rest
//! of the line as written; a server is started first when the README has not started one); the API
//! commands (accounts, send, sessions, records, token) get `wechat.api_base` pointed at a
//! `MockWechat` and an app id/secret through `KEFU_*` variables. Every command must exit 0 within
//! [`PATIENCE`] without a panic; `serve` must stop cleanly on SIGTERM at the end.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::mock_wechat::{MockResponse, MockWechat};
use clap::CommandFactory;
use serde_json::json;

/// How long one README command may take (the binary is built; a push is answered in
/// milliseconds), and how long `serve` may take to listen.
const PATIENCE: Duration = Duration::from_secs(60);

/// CI's own commands: shown in the README for developers, run by `.ci/run` (which must contain
/// each of them), not re-run here — `cargo test` is the run this check is part of.
const CI_OWN: &[&str] = &[
    "cargo test",
    "cargo fmt --check",
    "cargo clippy --all-targets -- -D warnings",
    "bash .ci/run",
];

/// Subcommands that README examples do not run, and the function (`module::fn` under tests/it)
/// that runs each through the binary. The function's source must contain every word of the
/// subcommand as a string literal (`"accounts", "online"`), so a rename breaks the check.
const COVERED_ELSEWHERE: &[(&str, &str)] = &[
    ("rules check", "rules::the_example_rules_pass_their_own_tests"),
    ("accounts list", "cli_api::accounts_commands"),
    ("accounts online", "readme::accounts_online_lists_who_is_online"),
    ("accounts add", "cli_api::accounts_commands"),
    ("accounts update", "cli_api::accounts_commands"),
    ("accounts invite", "cli_api::accounts_commands"),
    ("accounts delete", "cli_api::accounts_commands"),
    ("accounts avatar", "cli_api::accounts_commands"),
    ("send", "cli_api::send_text_image_and_json_file"),
    ("window list", "state::kefu_window_cli_reads_the_store_of_a_running_server"),
    ("sessions list", "cli_api::sessions_commands"),
    ("sessions get", "cli_api::sessions_commands"),
    ("sessions create", "cli_api::sessions_commands"),
    ("sessions close", "cli_api::sessions_commands"),
    ("sessions waiting", "cli_api::sessions_commands"),
    ("records", "cli_api::records_parse_times_and_page"),
    ("token", "cli_api::token_shows_source_and_expiry_and_reveals_only_on_request"),
    ("completions", "ops::completions_print_scripts_with_the_subcommands"),
    ("media upload", "media::media_commands_upload_and_list"),
    ("media list", "media::media_commands_upload_and_list"),
    ("history show", "state::kept_turns_are_per_follower_trimmed_and_shown_by_kefu_history"),
    ("history clear", "state::kept_turns_are_per_follower_trimmed_and_shown_by_kefu_history"),
    ("backends check", "backends::backends_check_prints_the_answer_or_names_the_cause"),
    ("conversations list", "conversations::the_cli_lists_shows_and_deletes_log_and_llm_turns"),
    ("conversations show", "conversations::the_cli_lists_shows_and_deletes_log_and_llm_turns"),
    ("conversations delete", "conversations::the_cli_lists_shows_and_deletes_log_and_llm_turns"),
];

/// The examples README runs with `cargo run --example NAME` (long-running servers, so not run
/// in the README session), and the test that runs each: its source must name the example.
const EXAMPLES_RUN_BY: &[(&str, &str)] =
    &[("order_backend", "backends::the_order_backend_example_answers_signed_requests")];

/// The subcommands that call the WeChat API (and so get the mock and credentials).
const API_COMMANDS: &[&str] = &["accounts", "send", "sessions", "records", "token"];

// ---------------------------------------------------------------------------------------------
// Extraction and classification

/// A command as the README shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Shown {
    /// 1-based line in README.md where it starts.
    line: usize,
    /// As written; an inline span's line breaks become spaces, a table's `\|` becomes `|`.
    text: String,
    /// In a shell code block (always run), or inline code.
    in_block: bool,
}

/// What the check does with one command.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Plan {
    /// Run `kefu` with these arguments, and these variables (`NAME=value` before the command).
    Run { env: Vec<(String, String)>, args: Vec<String> },
    /// One of [`CI_OWN`].
    CiOwn(String),
    /// A synopsis or a name: these subcommand paths must exist (and be covered).
    Names(Vec<String>),
    /// `cargo run --example NAME`: run by the test [`EXAMPLES_RUN_BY`] names.
    Example(String),
}

const SHELL_TAGS: &[&str] = &["sh", "bash", "shell", "console"];

/// Every command in shell code blocks, and every inline code span that starts with `kefu ` or
/// `cargo run`.
fn extract(markdown: &str) -> Vec<Shown> {
    let mut out = Vec::new();
    let mut fence: Option<String> = None; // the info string of the open block
    let mut pending: Option<(usize, String)> = None; // a block line continued with `\`
    // Inline code: prose lines (outside blocks) of the current paragraph.
    let mut prose: Vec<(usize, &str)> = Vec::new();
    for (i, raw) in markdown.lines().enumerate() {
        let n = i + 1;
        let trimmed = raw.trim_start();
        if trimmed.starts_with("```") {
            if fence.is_some() {
                fence = None;
            } else {
                out.extend(inline_spans(&prose));
                prose.clear();
                fence = Some(trimmed.trim_start_matches('`').trim().to_ascii_lowercase());
            }
            continue;
        }
        match &fence {
            Some(tag) => {
                let lang = tag.split_whitespace().next().unwrap_or("");
                if !SHELL_TAGS.contains(&lang) {
                    continue;
                }
                let line = raw.trim();
                let line = line.strip_prefix("$ ").unwrap_or(line);
                let (start, mut text) = match pending.take() {
                    Some((start, before)) => (start, before + " " + line),
                    None if line.is_empty() || line.starts_with('#') => continue,
                    None => (n, line.to_string()),
                };
                if let Some(cut) = text.strip_suffix('\\') {
                    text = cut.trim_end().to_string();
                    pending = Some((start, text));
                } else {
                    out.push(Shown { line: start, text, in_block: true });
                }
            }
            None if raw.trim().is_empty() => {
                out.extend(inline_spans(&prose));
                prose.clear();
            }
            None => prose.push((n, raw)),
        }
    }
    out.extend(inline_spans(&prose));
    out
}

/// The command-like code spans of one paragraph (a span may cross line breaks).
fn inline_spans(paragraph: &[(usize, &str)]) -> Vec<Shown> {
    let mut spans = Vec::new();
    let mut open: Option<(usize, usize, String)> = None; // (line, backtick run length, text)
    for (n, line) in paragraph {
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            if chars[i] == '`' {
                let run = chars[i..].iter().take_while(|c| **c == '`').count();
                i += run;
                match open.take() {
                    Some((start, len, text)) if len == run => spans.push((start, text)),
                    Some((start, len, mut text)) => {
                        text.extend(std::iter::repeat_n('`', run));
                        open = Some((start, len, text));
                    }
                    None => open = Some((*n, run, String::new())),
                }
                continue;
            }
            if let Some((_, _, text)) = open.as_mut() {
                text.push(chars[i]);
            }
            i += 1;
        }
        if let Some((_, _, text)) = open.as_mut() {
            text.push(' ');
        }
    }
    spans
        .into_iter()
        .map(|(line, text)| {
            let text = text.replace("\\|", "|");
            let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
            Shown { line, text, in_block: false }
        })
        .filter(|s| s.text == "kefu" || s.text.starts_with("kefu ") || is_cargo_run(&s.text))
        .collect()
}

fn is_cargo_run(text: &str) -> bool {
    text == "cargo run" || text.starts_with("cargo run ")
}

/// A word that stands for a value the reader supplies, or synopsis syntax.
fn is_placeholder(word: &str) -> bool {
    if word.contains(['[', ']', '(', ')', '|', '<', '>', '…']) || word.contains("...") {
        return true;
    }
    !word.starts_with('-')
        && word.chars().any(|c| c.is_ascii_uppercase())
        && word.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// How the check treats one shown command (several for `a && b`); `Err` names what cannot be
/// mapped, so an uncovered README command fails the build.
fn classify(shown: &Shown) -> Result<Vec<Plan>, String> {
    let words: Vec<&str> = shown.text.split_whitespace().collect();
    if !shown.in_block {
        if words == ["kefu"] || words == ["cargo", "run"] {
            return Ok(vec![Plan::Names(Vec::new())]); // the tool itself, named in prose
        }
        let args = kefu_args_of_words(&words)?;
        let is_name = args.iter().all(|a| a.chars().all(|c| c.is_ascii_lowercase()))
            && command_path(&args).len() == args.len();
        if is_name || args.iter().any(|a| is_placeholder(a)) {
            return Ok(vec![Plan::Names(named_paths(&args)?)]);
        }
    }
    let tokens = shlex::split(&shown.text)
        .ok_or_else(|| "its quoting does not parse as a shell command".to_string())?;
    let mut plans = Vec::new();
    for part in tokens.split(|t| t == "&&" || t == ";") {
        let joined = part.join(" ");
        if CI_OWN.contains(&joined.as_str()) {
            plans.push(Plan::CiOwn(joined));
            continue;
        }
        if let Some(t) =
            part.iter().find(|t| ["|", "||", ">", ">>", "<", "&"].contains(&t.as_str()))
        {
            return Err(format!(
                "`{joined}` uses the shell operator `{t}`, which this check does not run"
            ));
        }
        let assignments = part.iter().take_while(|t| is_assignment(t)).count();
        let env = part[..assignments]
            .iter()
            .filter_map(|t| t.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let words: Vec<&str> = part[assignments..].iter().map(String::as_str).collect();
        if let Some(name) = example_of_words(&words) {
            plans.push(Plan::Example(name));
            continue;
        }
        plans.push(Plan::Run { env, args: kefu_args_of_words(&words)? });
    }
    if plans.is_empty() {
        return Err("it is empty".into());
    }
    Ok(plans)
}

/// `NAME=value` before a command.
fn is_assignment(token: &str) -> bool {
    token.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// `cargo run [FLAGS] --example NAME` (no `-- ARGS`) → NAME.
fn example_of_words(words: &[&str]) -> Option<String> {
    let ["cargo", "run", rest @ ..] = words else { return None };
    if rest.contains(&"--") {
        return None;
    }
    let at = rest.iter().position(|w| *w == "--example")?;
    rest.get(at + 1).map(|n| n.to_string())
}

/// `kefu ARGS` → ARGS; `cargo run [FLAGS] -- ARGS` → ARGS.
fn kefu_args_of_words(words: &[&str]) -> Result<Vec<String>, String> {
    match words {
        ["kefu", args @ ..] => Ok(args.iter().map(|s| s.to_string()).collect()),
        ["cargo", "run", rest @ ..] => match rest.iter().position(|w| *w == "--") {
            Some(i) => Ok(rest[i + 1..].iter().map(|s| s.to_string()).collect()),
            None => Err("`cargo run` without `-- ARGS` does not say which kefu command".into()),
        },
        _ => Err(format!(
            "`{}` is not `kefu ARGS`, `cargo run -- ARGS`, or one of CI's own commands ({})",
            words.join(" "),
            CI_OWN.join(", ")
        )),
    }
}

/// The leading words of `args` that name (sub)commands: `["window", "show", "X"]` → window show.
fn command_path(args: &[String]) -> Vec<String> {
    let mut cmd = kefu::cli::Cli::command();
    let mut path = Vec::new();
    for a in args {
        let Some(sub) = cmd.find_subcommand(a).cloned() else { break };
        path.push(a.clone());
        cmd = sub;
    }
    path
}

/// The subcommand paths a synopsis names, alternatives included
/// (`accounts list | online` → `accounts list`, `accounts online`). A `|` between spaces separates
/// subcommands; one inside a word (`bash|zsh|fish`) separates values.
fn named_paths(args: &[String]) -> Result<Vec<String>, String> {
    let root = kefu::cli::Cli::command();
    let mut paths = Vec::new();
    let mut path: Vec<String> = Vec::new();
    // The next word follows a ` | `; the words so far still name subcommands; a global
    // option's value comes next.
    let (mut alternative, mut descending, mut option_value) = (false, true, false);
    for word in args {
        if word == "|" {
            alternative = true;
            continue;
        }
        if path.is_empty() && !alternative {
            if option_value {
                option_value = false;
                continue;
            }
            if word.starts_with('-') {
                option_value = !word.contains('=');
                continue;
            }
        }
        let is_alt = alternative && !path.is_empty();
        let parent_len = if is_alt { path.len() - 1 } else { path.len() };
        alternative = false;
        if !descending && !is_alt {
            continue;
        }
        let parent = lookup(&root, &path[..parent_len]);
        let exists = parent.as_ref().is_some_and(|p| p.find_subcommand(word).is_some());
        if exists && word.chars().all(|c| c.is_ascii_lowercase()) {
            if is_alt {
                paths.push(path.join(" "));
            }
            path.truncate(parent_len);
            path.push(word.clone());
            descending = true;
        } else if is_alt && !word.starts_with('-') && !is_placeholder(word) {
            let parent = path[..parent_len].join(" ");
            return Err(format!(
                "`{word}` is not a subcommand of `kefu {parent}` (see `kefu {parent} --help`)"
            ));
        } else if descending && path.is_empty() && !is_placeholder(word) {
            return Err(format!("`{word}` is not a kefu command (see `kefu --help`)"));
        } else {
            descending = false;
        }
    }
    if !path.is_empty() {
        paths.push(path.join(" "));
    }
    Ok(paths)
}

fn lookup(root: &clap::Command, path: &[String]) -> Option<clap::Command> {
    let mut cmd = root.clone();
    for p in path {
        cmd = cmd.find_subcommand(p)?.clone();
    }
    Some(cmd)
}

/// Every leaf subcommand path of the CLI (`rules check`, `serve`, ...).
fn cli_leaves() -> Vec<String> {
    fn walk(cmd: &clap::Command, prefix: &str, out: &mut Vec<String>) {
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            let path = if prefix.is_empty() {
                sub.get_name().to_string()
            } else {
                format!("{prefix} {}", sub.get_name())
            };
            if sub.has_subcommands() {
                walk(sub, &path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&kefu::cli::Cli::command(), "", &mut out);
    out
}

/// The subcommand path a runnable command reaches, as clap parses it.
fn parsed_path(args: &[String]) -> Option<String> {
    let matches = kefu::cli::Cli::command()
        .try_get_matches_from(std::iter::once("kefu".to_string()).chain(args.iter().cloned()))
        .ok()?;
    let mut path = Vec::new();
    let mut m = &matches;
    while let Some((name, sub)) = m.subcommand() {
        path.push(name.to_string());
        m = sub;
    }
    Some(path.join(" "))
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn readme() -> String {
    std::fs::read_to_string(repo().join("README.md")).expect("read README.md")
}

/// Every README command with its plan, or every line that cannot be mapped (all at once).
fn plans() -> Vec<(Shown, Vec<Plan>)> {
    let mut ok = Vec::new();
    let mut errors = Vec::new();
    for shown in extract(&readme()) {
        match classify(&shown) {
            Ok(p) => ok.push((shown, p)),
            Err(e) => errors.push(format!("README.md:{}: `{}`: {e}", shown.line, shown.text)),
        }
    }
    assert!(
        errors.is_empty(),
        "README commands this check cannot map (see tests/it/readme.rs for the rules):\n{}",
        errors.join("\n")
    );
    ok
}

// ---------------------------------------------------------------------------------------------
// The session that runs them

/// One finished command.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// What a process wrote, line by line ([`crate::ops::collect_lines`] reads it).
type Buf = crate::ops::Lines;

fn buf() -> Buf {
    Buf::default()
}

fn text(buf: &Buf) -> String {
    buf.lock().iter().map(|l| String::from_utf8_lossy(l).into_owned() + "\n").collect()
}

/// `kefu ARGS` in `dir`, with none of the caller's `KEFU_*`, `RUST_LOG` or `NO_COLOR`.
fn kefu_command(dir: &Path, env: &[(String, String)], args: &[String]) -> Command {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cmd = crate::helpers::kefu_command(dir, &env, &args);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

/// Runs to the end, or kills it after [`PATIENCE`] (`code: None`).
fn run_to_end(mut cmd: Command) -> Ran {
    let mut child = cmd.spawn().expect("spawn kefu");
    let (out, err) = (buf(), buf());
    let readers = [
        crate::ops::collect_lines(child.stdout.take().expect("stdout"), out.clone()),
        crate::ops::collect_lines(child.stderr.take().expect("stderr"), err.clone()),
    ];
    let started = Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status.code().unwrap_or(-1));
        }
        if started.elapsed() > PATIENCE {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    for r in readers {
        let _ = r.join();
    }
    Ran { code, stdout: text(&out), stderr: text(&err) }
}

/// A `kefu serve` running in the background.
struct Server {
    env: Vec<(String, String)>,
    args: Vec<String>,
    child: Child,
    /// `127.0.0.1:PORT`
    addr: String,
    stderr: Buf,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A plain HTTP/1.0 GET on loopback: (status, body).
fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    let status = answer.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// The scratch repository root and what runs in it.
struct Session {
    dir: tempfile::TempDir,
    mock: Option<MockWechat>,
    server: Option<Server>,
}

impl Session {
    fn new() -> Session {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = repo();
        let copy_files = |from: &Path, to: &Path| {
            std::fs::create_dir_all(to).expect("mkdir");
            for entry in std::fs::read_dir(from).expect("read dir").flatten() {
                // A developer's own ./kefu.toml is not part of a fresh clone.
                if entry.file_type().is_ok_and(|t| t.is_file()) && entry.file_name() != "kefu.toml"
                {
                    std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
                }
            }
        };
        copy_files(&root, dir.path());
        copy_files(&root.join("rules"), &dir.path().join("rules"));
        let fixtures = root.join("tests/fixtures/readme");
        if fixtures.is_dir() {
            copy_files(&fixtures, dir.path());
        }
        Session { dir, mock: None, server: None }
    }

    /// Runs one README command with its own variables; `Err` says what went wrong.
    fn run(&mut self, env: &[(String, String)], args: &[String]) -> Result<String, String> {
        let path = parsed_path(args).unwrap_or_default();
        let top = path.split(' ').next().unwrap_or("");
        match top {
            "serve" => self.serve(env, args),
            "push" => {
                if self.server.is_none() {
                    // The README has not started a server: start one with the push's config.
                    let mut serve = vec!["serve".to_string()];
                    if let Some(i) = args.iter().position(|a| a == "--config") {
                        serve.extend(args[i..].iter().take(2).cloned());
                    }
                    self.serve(env, &serve)?;
                }
                let addr = self.server.as_ref().map(|s| s.addr.clone()).unwrap_or_default();
                let args = rewrite_url(args, &addr);
                let ran = self.finish(env, &args, &[])?;
                if !ran.stdout.starts_with("HTTP 200") {
                    return Err(format!("the push was not answered with 200:\n{}", ran.stdout));
                }
                Ok(ran.stdout)
            }
            _ if API_COMMANDS.contains(&top) => {
                let base = self.mock.get_or_insert_with(MockWechat::start).url();
                // `--account NAME` (interface §10): the mock's credentials as that account's,
                // defined by its KEFU_ACCOUNTS_<NAME>_* variables alone.
                let prefix = match args.iter().position(|a| a == "--account") {
                    Some(i) => format!(
                        "KEFU_ACCOUNTS_{}_",
                        args[i + 1].replace('-', "_").to_ascii_uppercase()
                    ),
                    None => "KEFU_WECHAT_".to_string(),
                };
                let vars: Vec<(String, &str)> = [
                    ("APP_ID", "wxReadme0000000001"),
                    ("APP_SECRET", "ReadmeSecret0123456789"),
                    ("API_BASE", base.as_str()),
                ]
                .into_iter()
                .map(|(k, v)| (format!("{prefix}{k}"), v))
                .collect();
                let mock_env: Vec<(&str, &str)> =
                    vars.iter().map(|(k, v)| (k.as_str(), *v)).collect();
                Ok(self.finish(env, args, &mock_env)?.stdout)
            }
            _ => Ok(self.finish(env, args, &[])?.stdout),
        }
    }

    /// Runs to the end with the README's variables, then ours; exit 0 and no panic, else `Err`
    /// with what it wrote.
    fn finish(
        &self,
        readme_env: &[(String, String)],
        args: &[String],
        ours: &[(&str, &str)],
    ) -> Result<Ran, String> {
        let mut env = readme_env.to_vec();
        env.extend(ours.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let ran = run_to_end(kefu_command(self.dir.path(), &env, args));
        let wrote = format!("stdout:\n{}stderr:\n{}", ran.stdout, ran.stderr);
        match ran.code {
            None => Err(format!("still running after {PATIENCE:?}\n{wrote}")),
            Some(0) if ran.stderr.contains("panicked") => Err(format!("panicked\n{wrote}")),
            Some(0) => Ok(ran),
            Some(c) => Err(format!("exit {c}\n{wrote}")),
        }
    }

    /// Starts `kefu ARGS` (a serve) in the background on a free port; it must listen and answer
    /// `/healthz` with 200. The same command line again keeps the running server.
    fn serve(
        &mut self,
        readme_env: &[(String, String)],
        args: &[String],
    ) -> Result<String, String> {
        if self.server.as_ref().is_some_and(|s| s.args == args && s.env == readme_env) {
            return Ok(String::new());
        }
        if let Some(old) = self.server.take() {
            stop(old)?;
        }
        let mut env = readme_env.to_vec();
        env.push(("KEFU_SERVER_LISTEN".to_string(), "127.0.0.1:0".to_string()));
        let mut child =
            kefu_command(self.dir.path(), &env, args).spawn().expect("spawn kefu serve");
        let stderr = buf();
        crate::ops::collect_lines(child.stderr.take().expect("stderr"), stderr.clone());
        crate::ops::collect_lines(child.stdout.take().expect("stdout"), buf());
        let mut server = Server {
            env: readme_env.to_vec(),
            args: args.to_vec(),
            child,
            addr: String::new(),
            stderr,
        };
        let started = Instant::now();
        server.addr = loop {
            let log = text(&server.stderr);
            if let Some(addr) = listening_address(&log) {
                break addr;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!("kefu serve exited ({status}) before listening:\n{log}"));
            }
            if started.elapsed() > PATIENCE {
                return Err(format!("kefu serve is not listening after {PATIENCE:?}:\n{log}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        match http_get(&server.addr, "/healthz") {
            Ok((200, _)) => {}
            other => {
                return Err(format!(
                    "GET /healthz answered {other:?}, not 200:\n{}",
                    text(&server.stderr)
                ));
            }
        }
        self.server = Some(server);
        Ok(String::new())
    }
}

/// SIGTERM; the server must stop by itself with exit 0 (and no panic).
fn stop(mut server: Server) -> Result<(), String> {
    let pid = server.child.id() as libc::pid_t;
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let started = Instant::now();
    let status = loop {
        if let Some(s) = server.child.try_wait().expect("wait") {
            break s;
        }
        if started.elapsed() > Duration::from_secs(15) {
            return Err(format!(
                "kefu serve still running 15 s after SIGTERM:\n{}",
                text(&server.stderr)
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = text(&server.stderr);
    if status.code() != Some(0) || log.contains("panicked") {
        return Err(format!("kefu serve ended with {status} on SIGTERM:\n{log}"));
    }
    Ok(())
}

/// The address of the "kefu listening" log line (text or JSON format).
fn listening_address(log: &str) -> Option<String> {
    log.lines().filter(|l| l.contains("kefu listening")).find_map(|line| {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
            return v["fields"]["address"].as_str().or(v["address"].as_str()).map(str::to_string);
        }
        let at = line.find("address=")? + "address=".len();
        line[at..].split_whitespace().next().map(str::to_string)
    })
}

/// The `--url` (or `--url=`) value with its loopback authority replaced by `addr`.
fn rewrite_url(args: &[String], addr: &str) -> Vec<String> {
    let swap = |u: &str| -> String {
        match url::Url::parse(u) {
            Ok(parsed)
                if matches!(parsed.host_str(), Some("127.0.0.1" | "localhost" | "0.0.0.0")) =>
            {
                let rest = &u[parsed.scheme().len() + 3..];
                let path_at = rest.find('/').unwrap_or(rest.len());
                format!("{}://{addr}{}", parsed.scheme(), &rest[path_at..])
            }
            _ => u.to_string(),
        }
    };
    let mut out = Vec::with_capacity(args.len());
    let mut next_is_url = false;
    for a in args {
        if next_is_url {
            out.push(swap(a));
            next_is_url = false;
        } else if a == "--url" {
            out.push(a.clone());
            next_is_url = true;
        } else if let Some(u) = a.strip_prefix("--url=") {
            out.push(format!("--url={}", swap(u)));
        } else {
            out.push(a.clone());
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The checks

#[test]
fn every_readme_command_runs_as_written() {
    let plans = plans();
    let runnable = plans.iter().filter(|(_, p)| p.iter().any(|p| matches!(p, Plan::Run { .. })));
    assert!(runnable.count() > 0, "README.md has no command to run: is the extraction broken?");

    let mut session = Session::new();
    let mut failures = Vec::new();
    let mut ran = Vec::new();
    for (shown, plan) in &plans {
        for p in plan {
            if let Plan::Run { env, args } = p {
                match session.run(env, args) {
                    Ok(_) => ran.push(format!("README.md:{}: {}", shown.line, shown.text)),
                    Err(e) => failures.push(format!(
                        "README.md:{}: `{}` (run as `kefu {}`): {e}",
                        shown.line,
                        shown.text,
                        args.join(" ")
                    )),
                }
            }
        }
    }
    if let Some(server) = session.server.take()
        && let Err(e) = stop(server)
    {
        failures.push(e);
    }
    assert!(failures.is_empty(), "README commands that fail:\n\n{}", failures.join("\n\n"));
    eprintln!("README commands run:\n{}", ran.join("\n"));
}

#[test]
fn ci_own_readme_commands_are_what_ci_runs() {
    let ci = std::fs::read_to_string(repo().join(".ci/run")).expect("read .ci/run");
    let ci_lines: Vec<&str> = ci.lines().map(str::trim).collect();
    for own in CI_OWN.iter().filter(|c| c.starts_with("cargo ")) {
        assert!(
            ci_lines.contains(own),
            "`{own}` is listed as CI's own but .ci/run does not run it"
        );
    }
    // This check is part of `cargo test`, so CI runs it.
    assert!(ci_lines.contains(&"cargo test"), ".ci/run does not run `cargo test`");
    let shown: Vec<String> = plans()
        .into_iter()
        .flat_map(|(_, p)| p)
        .filter_map(|p| if let Plan::CiOwn(c) = p { Some(c) } else { None })
        .collect();
    assert!(shown.contains(&"cargo test".to_string()), "README.md does not show `cargo test`");
}

#[test]
fn every_subcommand_is_run_by_a_check() {
    let leaves = cli_leaves();
    let mut problems = Vec::new();
    let mut covered: Vec<String> = Vec::new();
    for (shown, plan) in plans() {
        for p in plan {
            match p {
                Plan::Run { args, .. } => match parsed_path(&args) {
                    Some(path) => covered.push(path),
                    None => problems.push(format!(
                        "README.md:{}: `{}` does not parse as a kefu command line",
                        shown.line, shown.text
                    )),
                },
                Plan::Names(paths) => {
                    for path in paths {
                        let known =
                            leaves.iter().any(|l| *l == path || l.starts_with(&format!("{path} ")));
                        if !known {
                            problems.push(format!(
                                "README.md:{}: `{}` names `kefu {path}`, which does not exist",
                                shown.line, shown.text
                            ));
                        }
                    }
                }
                Plan::CiOwn(_) => {}
                Plan::Example(name) => {
                    let file = repo().join("examples").join(format!("{name}.rs"));
                    let test = EXAMPLES_RUN_BY.iter().find(|(n, _)| *n == name).map(|(_, t)| t);
                    let runs = test.map(|t| function_source(t));
                    match runs {
                        _ if !file.is_file() => problems.push(format!(
                            "README.md:{}: `{}` runs examples/{name}.rs, which does not exist",
                            shown.line, shown.text
                        )),
                        Some(Ok(src)) if src.contains(&format!("\"{name}\"")) => {}
                        Some(Ok(_)) => problems.push(format!(
                            "EXAMPLES_RUN_BY: {} does not run the example `{name}`",
                            test.unwrap_or(&"?")
                        )),
                        Some(Err(e)) => problems.push(format!("EXAMPLES_RUN_BY: {e}")),
                        None => problems.push(format!(
                            "README.md:{}: `{}` runs the example `{name}`, which no test runs: \
                             name the test in EXAMPLES_RUN_BY (tests/it/readme.rs)",
                            shown.line, shown.text
                        )),
                    }
                }
            }
        }
    }
    for (path, test) in COVERED_ELSEWHERE {
        if !leaves.iter().any(|l| l == path) {
            problems.push(format!("COVERED_ELSEWHERE lists `kefu {path}`, which does not exist"));
            continue;
        }
        match function_source(test) {
            Ok(src) => {
                let missing: Vec<&str> =
                    path.split(' ').filter(|w| !src.contains(&format!("\"{w}\""))).collect();
                if missing.is_empty() {
                    covered.push(path.to_string());
                } else {
                    problems.push(format!(
                        "COVERED_ELSEWHERE: {test} does not run `kefu {path}` (no {missing:?} in it)"
                    ));
                }
            }
            Err(e) => problems.push(format!("COVERED_ELSEWHERE: {test}: {e}")),
        }
    }
    for leaf in &leaves {
        if !covered.contains(leaf) {
            problems.push(format!(
                "`kefu {leaf}` is run by no check: run it in README.md (a ```sh line or an \
                 inline example) or name the test that runs it in COVERED_ELSEWHERE \
                 (tests/it/readme.rs)"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The source of `fn NAME` in tests/it/MODULE.rs, up to the next top-level item.
fn function_source(test: &str) -> Result<String, String> {
    let (module, name) = test.split_once("::").ok_or("expected module::function")?;
    let file = repo().join("tests/it").join(format!("{module}.rs"));
    let src = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    let start = [format!("fn {name}("), format!("fn {name}<")]
        .iter()
        .find_map(|pat| src.find(pat.as_str()))
        .ok_or_else(|| format!("no `fn {name}` in {}", file.display()))?;
    let body = &src[start..];
    let end = body.find("\n}\n").map(|i| i + 3).unwrap_or(body.len());
    Ok(body[..end].to_string())
}

/// The rules themselves, on a made-up README: what is run, what is CI's, what is a synopsis,
/// and that an unmapped command fails naming its line.
#[test]
fn the_rules_classify_and_refuse_as_documented() {
    let md = "# t\n\n```sh\ncargo run --release -- serve \\\n  --config a.toml\n# comment\n\
              cargo fmt --check && cargo clippy --all-targets -- -D warnings\n```\n\n\
              Run `kefu simulate --text 退款` or `kefu rules import a.json --out\nr/x.toml`; see\n\
              `kefu rules check`, `kefu window show OPENID \\| list` and `kefu.toml`.\n\n\
              ```toml\nkefu = 1\n```\n\n```sh\nmake install\n```\n";
    let shown = extract(md);
    let texts: Vec<(usize, &str, bool)> =
        shown.iter().map(|s| (s.line, s.text.as_str(), s.in_block)).collect();
    assert_eq!(
        texts,
        [
            (4, "cargo run --release -- serve --config a.toml", true),
            (7, "cargo fmt --check && cargo clippy --all-targets -- -D warnings", true),
            (10, "kefu simulate --text 退款", false),
            (10, "kefu rules import a.json --out r/x.toml", false),
            (12, "kefu rules check", false),
            (12, "kefu window show OPENID | list", false),
            (19, "make install", true),
        ]
    );
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let run = |args: Vec<String>| Plan::Run { env: Vec::new(), args };
    let plans: Vec<Result<Vec<Plan>, String>> = shown.iter().map(classify).collect();
    assert_eq!(plans[0], Ok(vec![run(s(&["serve", "--config", "a.toml"]))]));
    assert_eq!(
        plans[1],
        Ok(vec![
            Plan::CiOwn("cargo fmt --check".into()),
            Plan::CiOwn("cargo clippy --all-targets -- -D warnings".into())
        ])
    );
    assert_eq!(plans[2], Ok(vec![run(s(&["simulate", "--text", "退款"]))]));
    assert_eq!(plans[3], Ok(vec![run(s(&["rules", "import", "a.json", "--out", "r/x.toml"]))]));
    assert_eq!(plans[4], Ok(vec![Plan::Names(s(&["rules check"]))]));
    assert_eq!(plans[5], Ok(vec![Plan::Names(s(&["window show", "window list"]))]));
    let err = plans[6].clone().expect_err("an unmapped command is refused");
    assert!(err.contains("`make install` is not `kefu ARGS`"), "{err}");

    // Synopses of the README's command table.
    let names = |t: &str| classify(&Shown { line: 1, text: t.into(), in_block: false });
    assert_eq!(
        names("kefu sessions list KF | get OPENID | create KF OPENID | close KF OPENID | waiting"),
        Ok(vec![Plan::Names(s(&[
            "sessions list",
            "sessions get",
            "sessions create",
            "sessions close",
            "sessions waiting"
        ]))])
    );
    assert_eq!(names("kefu completions bash|zsh|fish"), Ok(vec![Plan::Names(s(&["completions"]))]));
    assert_eq!(
        names("kefu push --url URL (--text … | --event … | --xml …) [--encrypt]"),
        Ok(vec![Plan::Names(s(&["push"]))])
    );
    assert!(names("kefu frobnicate FILE").is_err_and(|e| e.contains("`frobnicate` is not a kefu")));
    assert!(names("kefu window show OPENID | lst").is_err_and(|e| e.contains("`lst` is not")));
    // Variables before a command are passed to it.
    let with_env =
        Shown { line: 2, text: "RUST_LOG=kefu=debug kefu rules check".into(), in_block: true };
    assert_eq!(
        classify(&with_env),
        Ok(vec![Plan::Run {
            env: vec![("RUST_LOG".into(), "kefu=debug".into())],
            args: s(&["rules", "check"])
        }])
    );
    // Pipes are not run.
    let piped = Shown { line: 3, text: "kefu rules check | head -1".into(), in_block: true };
    assert!(classify(&piped).is_err_and(|e| e.contains("shell operator `|`")));
    // The URL of a push is pointed at the test's server, the rest kept as written.
    assert_eq!(
        rewrite_url(
            &s(&["push", "--url", "http://127.0.0.1:8080/wechat", "--text", "x"]),
            "127.0.0.1:4242"
        ),
        s(&["push", "--url", "http://127.0.0.1:4242/wechat", "--text", "x"])
    );
}

/// `kefu accounts online`, which no other test runs through the binary: it asks WeChat's
/// `getonlinekflist` with the token and prints who is online.
#[test]
fn accounts_online_lists_who_is_online() {
    let mock = MockWechat::start();
    mock.set_default(
        "/cgi-bin/customservice/getonlinekflist",
        MockResponse::json(json!({"kf_online_list": [
            {"kf_account": "kf01@gh_test", "status": 1, "kf_id": "1001", "accepted_case": 2}
        ]})),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let base = mock.url();
    let env: Vec<(String, String)> = [
        ("KEFU_WECHAT_APP_ID", "wxReadme0000000001"),
        ("KEFU_WECHAT_APP_SECRET", "ReadmeSecret0123456789"),
        ("KEFU_WECHAT_API_BASE", base.as_str()),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let args = ["accounts".to_string(), "online".to_string()];
    let ran = run_to_end(kefu_command(dir.path(), &env, &args));
    assert_eq!(ran.code, Some(0), "{}{}", ran.stdout, ran.stderr);
    assert!(ran.stdout.contains("kf01@gh_test"), "{}", ran.stdout);
    let asked = mock.requests_to("/cgi-bin/customservice/getonlinekflist");
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].query("access_token"), Some("MOCK_TOKEN_1"));
}
