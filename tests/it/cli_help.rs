//! The real binary's command line as an operator meets it: every subcommand's `--help` and
//! `help SUBCOMMAND` exit 0, a typo gets at most three lines and exit 2, the bash completion
//! script loads in a real bash and completes, the generated man page renders with `man`,
//! `lock -q -E 0` under a held lock is silent and exits 0, `--ttl=5s` is taken, and a
//! duration string in an `_ms` configuration key is its milliseconds.

use std::process::{Command, Output, Stdio};

use crate::support::http::Client;
use crate::support::{config, Server};

/// `leasehold ARGS…` with no `LEASEHOLD_*` variable from the caller's environment.
fn leasehold(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_leasehold"));
    cmd.args(args).stdin(Stdio::null());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("LEASEHOLD_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

fn run(args: &[&str]) -> Output {
    leasehold(args).output().expect("run leasehold")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A tool the test needs, or a failure that says how to get it (nothing is skipped).
fn need(tool: &str) {
    let found = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().expect("run sh");
    assert!(found.status.success(), "{tool} is missing: run `sudo bash tests/deps.sh`");
}

/// Every subcommand a person may run, nested ones as `journal verify`.
fn subcommands() -> Vec<Vec<String>> {
    let root = leasehold::cli::command();
    let mut out = Vec::new();
    for sub in root.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        out.push(vec![sub.get_name().to_string()]);
        for nested in sub.get_subcommands().filter(|s| s.get_name() != "help") {
            out.push(vec![sub.get_name().to_string(), nested.get_name().to_string()]);
        }
    }
    out
}

#[test]
fn every_subcommand_help_exits_0_on_stdout() {
    let all = subcommands();
    assert!(all.len() >= 11, "{all:?}");
    for words in all {
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        let usage = format!("Usage: leasehold {}", words.join(" "));
        for args in
            [[&words[..], &["--help"]].concat(), [&words[..], &["-h"]].concat(), [&["help"], &words[..]].concat()]
        {
            let out = run(&args);
            assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out.stderr));
            assert!(text(&out.stdout).contains(&usage), "{args:?}: {}", text(&out.stdout));
            assert!(out.stderr.is_empty(), "{args:?}: {}", text(&out.stderr));
        }
    }
    for args in [&["--help"][..], &["help"][..], &["-h"][..]] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(text(&out.stdout).contains("Usage: leasehold <COMMAND>"), "{args:?}");
    }
}

#[test]
fn a_typo_gets_at_most_three_lines_ending_with_a_help_hint_and_exit_2() {
    for args in [
        &["frobnicate"][..],
        &["stauts"][..],
        &[][..],
        &["lock", "nightly", "--tll", "5s", "--", "true"][..],
        &["lock", "nightly", "--ttl", "5 s", "--", "true"][..],
        &["lock", "nightly", "true"][..],
        &["status", "--jsno"][..],
        &["serve", "--confg", "x.toml"][..],
        &["journal", "verfy", "/tmp"][..],
        &["completions", "tcsh"][..],
    ] {
        let out = run(args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert!(!lines.is_empty() && lines.len() <= 3, "{args:?}: {} lines:\n{stderr}", lines.len());
        let last = lines[lines.len() - 1];
        assert!(
            last.starts_with("For more information, try 'leasehold") && last.ends_with(" --help'."),
            "{args:?}: {stderr}"
        );
    }
    let out = run(&["lock", "nightly", "--tll", "5s", "--", "true"]);
    assert!(text(&out.stderr).contains("a similar argument exists: '--ttl'"), "{}", text(&out.stderr));
}

#[test]
fn bash_completion_loads_in_a_real_bash_and_completes() {
    need("bash");
    let bin = env!("CARGO_BIN_EXE_leasehold");
    // `complete -p` fails unless the script registered the function; then the function is
    // called as bash would on TAB, once for a subcommand, once for an option of `lock`.
    let script = format!(
        r#"set -e
source <("{bin}" completions bash)
complete -p leasehold
COMP_WORDS=(leasehold lo); COMP_CWORD=1; COMP_LINE="leasehold lo"; COMP_POINT=${{#COMP_LINE}}
_leasehold leasehold lo leasehold
echo "subcommands: ${{COMPREPLY[*]}}"
COMP_WORDS=(leasehold lock --confl); COMP_CWORD=2; COMP_LINE="leasehold lock --confl"; COMP_POINT=${{#COMP_LINE}}
_leasehold leasehold --confl lock
echo "options: ${{COMPREPLY[*]}}"
"#
    );
    let out = Command::new("bash").args(["--norc", "--noprofile", "-c", &script]).output().expect("run bash");
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.starts_with("complete ") && stdout.contains("-F _leasehold leasehold"), "{stdout}");
    assert!(stdout.contains("subcommands: lock"), "{stdout}");
    assert!(stdout.contains("options: --conflict-exit-code"), "{stdout}");
    for shell in ["zsh", "fish"] {
        let out = run(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}");
        assert!(text(&out.stdout).contains("leasehold"), "{shell}");
    }
}

#[test]
fn the_man_page_renders_with_man() {
    need("man");
    need("groff");
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("leasehold.1");
    let out = run(&["man"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    std::fs::write(&page, &out.stdout).unwrap();
    let rendered = Command::new("man")
        .arg("-l")
        .arg(&page)
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        .env("LC_ALL", "C.UTF-8")
        .output()
        .expect("run man");
    let shown = text(&rendered.stdout);
    assert!(rendered.status.success(), "{}", text(&rendered.stderr));
    for heading in ["NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "EXIT STATUS", "ENVIRONMENT"] {
        assert!(shown.lines().any(|l| l == heading), "no {heading} section in:\n{shown}");
    }
    assert!(shown.contains("leasehold - Fast, fair, durable locks"), "{shown}");
    assert!(shown.contains("--conflict-exit-code"), "{shown}");
    // groff says nothing about the page (a warning would mean broken roff).
    let warnings = Command::new("groff").args(["-man", "-Tutf8", "-ww", "-z"]).arg(&page).output().expect("run groff");
    assert!(warnings.status.success() && warnings.stderr.is_empty(), "{}", text(&warnings.stderr));
}

#[test]
fn lock_quiet_with_conflict_exit_code_0_is_silent_when_the_lock_is_held() {
    let s = Server::start(&config("workers = 1", ""));
    let mut c = Client::connect(s.addr).unwrap();
    assert_eq!(c.post("/v1/locks/cron-job/acquire", r#"{"ttl_ms":60000}"#).unwrap().status, 200);
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let touch = format!("touch {}", marker.display());
    let url = format!("http://{}", s.addr);
    let silent = |args: &[&str]| leasehold(args).env("LEASEHOLD_URL", &url).output().unwrap();
    let out = silent(&["lock", "-q", "-E", "0", "cron-job", "--", "sh", "-c", &touch]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
    // -q alone keeps the default status; -E alone still says why.
    let out = silent(&["lock", "--quiet", "--wait=300ms", "cron-job", "--", "sh", "-c", &touch]);
    assert_eq!((out.status.code(), out.stderr.is_empty()), (Some(75), true), "{}", text(&out.stderr));
    let out = silent(&["lock", "--conflict-exit-code=9", "cron-job", "--", "sh", "-c", &touch]);
    assert_eq!(out.status.code(), Some(9));
    assert!(text(&out.stderr).contains("could not be had"), "{}", text(&out.stderr));
    assert!(!marker.exists(), "the command never ran");
    // A real failure is not a conflict: -q -E 0 still reports an unreachable server.
    let out =
        leasehold(&["lock", "-q", "-E", "0", "--server", "http://127.0.0.1:1", "x", "--", "true"]).output().unwrap();
    assert_eq!(out.status.code(), Some(69), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("cannot reach"), "{}", text(&out.stderr));
}

#[test]
fn lock_takes_ttl_as_opt_equals_value() {
    let s = Server::start(&config("workers = 1", ""));
    let dir = tempfile::tempdir().unwrap();
    let (held, done) = (dir.path().join("held"), dir.path().join("done"));
    // The command says it holds the lease, then waits (up to 30 s) for the test to let it end.
    let script = format!(
        "echo $LEASEHOLD_FENCE > {held}; i=0; while [ ! -e {done} ] && [ $i -lt 3000 ]; do sleep 0.01; i=$((i+1)); done",
        held = held.display(),
        done = done.display()
    );
    let mut child = leasehold(&["lock", "--ttl=5s", "short-lease", "--", "sh", "-c", &script])
        .env("LEASEHOLD_URL", format!("http://{}", s.addr))
        .spawn()
        .unwrap();
    crate::support::wait_until("the command to hold the lease", || {
        std::fs::read_to_string(&held).is_ok_and(|t| t.ends_with('\n'))
    });
    let mut c = Client::connect(s.addr).unwrap();
    let lock = c.get("/v1/locks/short-lease").unwrap().json();
    let left = lock["holders"][0]["expires_in_ms"].as_u64().expect("a holder");
    assert!(left <= 5_000 && left > 0, "a 5 s lease has {left} ms left: {lock}");
    std::fs::write(&done, "").unwrap();
    let status = crate::support::wait_for("leasehold lock to end", || child.try_wait().unwrap().ok_or("running"));
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_duration_string_in_an_ms_key_passes_check_config_and_is_its_milliseconds() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let as_text = "[server]\ndrain_timeout_ms = \"5s\"\n";
    let good = write("good.toml", as_text);
    let out = leasehold(&["check-config"]).arg(&good).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let load = |t: &str| leasehold::config::Config::load(Some(t), &[]).unwrap();
    assert_eq!(load(as_text).server.drain_timeout_ms, 5_000);
    assert_eq!(load(as_text), load("[server]\ndrain_timeout_ms = 5000\n"));
    let bad = write("bad.toml", "[server]\ndrain_timeout_ms = \"5 seconds\"\n");
    let out = leasehold(&["check-config"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("server.drain_timeout_ms: \"5 seconds\" is not a duration"), "{stderr}");
    let out = leasehold(&["check-config"]).arg(&good).env("LEASEHOLD_DRAIN_TIMEOUT_MS", "1m").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}
