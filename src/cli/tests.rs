//! Command-line tests: every subcommand's options parse as the README says, mistakes give
//! short errors, and the help, completions and man page are generated from the one
//! declaration. The environment of the test process is never read: every `env` fallback is
//! taken off the command first.

use super::*;
use crate::client::args::{Target, DEFAULT_SERVER};

/// `cmd` and its subcommands with no environment fallbacks.
fn without_env(mut cmd: clap::Command) -> clap::Command {
    let with_env: Vec<clap::Id> =
        cmd.get_arguments().filter(|a| a.get_env().is_some()).map(|a| a.get_id().clone()).collect();
    for id in with_env {
        cmd = cmd.mut_arg(id, |a| a.env(None::<&'static str>));
    }
    let names: Vec<String> = cmd.get_subcommands().map(|s| s.get_name().to_string()).collect();
    for name in names {
        cmd = cmd.mut_subcommand(name, without_env);
    }
    cmd
}

fn argv(args: &[&str]) -> Vec<OsString> {
    std::iter::once(BIN).chain(args.iter().copied()).map(OsString::from).collect()
}

/// Parses `leasehold ARGS…` as if no `LEASEHOLD_*` variable were set.
fn parse(args: &[&str]) -> Result<Command, clap::Error> {
    let mut cmd = without_env(command());
    let matches = cmd.try_get_matches_from_mut(argv(args))?;
    Cli::from_arg_matches(&matches).map(|cli| cli.command).map_err(|e| e.format(&mut cmd))
}

fn lock(args: &[&str]) -> LockArgs {
    match parse(args) {
        Ok(Command::Lock(lock)) => lock,
        other => panic!("{args:?}: {other:?}"),
    }
}

fn status(args: &[&str]) -> StatusArgs {
    match parse(args) {
        Ok(Command::Status(status)) => status,
        other => panic!("{args:?}: {other:?}"),
    }
}

fn release(args: &[&str]) -> ReleaseArgs {
    match parse(args) {
        Ok(Command::Release(release)) => release,
        other => panic!("{args:?}: {other:?}"),
    }
}

/// The short error `args` get; panics if they parse.
fn error(args: &[&str]) -> String {
    match parse(args) {
        Ok(parsed) => panic!("{args:?} parsed: {parsed:?}"),
        Err(e) => {
            assert!(!is_help_or_version(&e), "{args:?}: {e}");
            short_error(&e, &argv(args))
        }
    }
}

#[test]
fn command_declaration_passes_clap_checks() {
    command().debug_assert();
}

#[test]
fn lock_takes_options_in_any_order_and_the_command_verbatim() {
    let a = lock(&[
        "lock",
        "--ttl",
        "10s",
        "nightly",
        "--wait",
        "1m",
        "--server",
        "http://h:9/",
        "--limit",
        "2",
        "--",
        "sh",
        "-c",
        "--x",
    ]);
    assert_eq!(a.name, "nightly");
    assert_eq!((a.ttl_ms, a.wait_ms, a.limit, a.weight), (Some(10_000), 60_000, Some(2), 1));
    assert_eq!(a.target, Target { server: "http://h:9".into(), key: None, cacert: None });
    assert_eq!(a.command, ["sh", "-c", "--x"]);
}

#[test]
fn lock_defaults_are_the_documented_ones() {
    let d = lock(&["lock", "n", "--", "true"]);
    assert_eq!(d.target, Target { server: DEFAULT_SERVER.into(), key: None, cacert: None });
    assert_eq!((d.ttl_ms, d.wait_ms, d.grace_ms, d.limit, d.weight), (None, 0, 10_000, None, 1));
    assert_eq!((d.quiet, d.conflict_exit_code, d.owner), (false, 75, None));
}

#[test]
fn lock_shared_and_exclusive_ask_for_a_read_write_lock_without_a_permit_count() {
    let a = lock(&["lock", "--shared", "conf", "--", "cat", "conf"]);
    assert!(a.shared && !a.exclusive);
    let a = lock(&["lock", "--exclusive", "conf", "--", "true"]);
    assert!(a.exclusive && !a.shared);
    let d = lock(&["lock", "conf", "--", "true"]);
    assert!(!d.shared && !d.exclusive);
}

#[test]
fn lock_takes_opt_equals_value_short_options_and_bare_seconds() {
    let a = lock(&[
        "lock",
        "--ttl=5s",
        "-w",
        "250ms",
        "--grace=45",
        "--owner=host a",
        "--key=k",
        "-q",
        "-E",
        "0",
        "n",
        "--",
        "true",
    ]);
    assert_eq!((a.ttl_ms, a.wait_ms, a.grace_ms), (Some(5_000), 250, 45_000));
    assert_eq!((a.owner.as_deref(), a.target.key.as_deref()), (Some("host a"), Some("k")));
    assert_eq!((a.quiet, a.conflict_exit_code), (true, 0));
    let a = lock(&["lock", "-qE", "3", "--conflict-exit-code=4", "--wait=1m30s", "n", "--", "true"]);
    assert_eq!((a.quiet, a.conflict_exit_code, a.wait_ms), (true, 4, 90_000));
}

#[test]
fn lock_refuses_what_it_cannot_run() {
    for (args, says) in [
        (&["lock"][..], "the following required arguments were not provided: <NAME> <CMD>..."),
        (&["lock", "--", "true"][..], "<NAME>"),
        (&["lock", "n"][..], "<CMD>..."),
        (&["lock", "n", "--"][..], "<CMD>..."),
        (&["lock", "n", "--bogus", "--", "true"][..], "unexpected argument '--bogus' found"),
        (&["lock", "n", "--ttl"][..], "a value is required for '--ttl <DURATION>'"),
        (&["lock", "n", "--limit", "0", "--", "true"][..], "invalid value '0' for '--limit <N>'"),
        (&["lock", "n", "--shared", "--exclusive", "--", "true"][..], "cannot be used with '--exclusive'"),
        (&["lock", "n", "--shared", "--limit", "2", "--", "true"][..], "cannot be used with '--limit <N>'"),
        (&["lock", "n", "--exclusive", "--weight", "2", "--", "true"][..], "cannot be used with '--weight <N>'"),
        (&["lock", "n", "--ttl", "100ms", "--", "true"][..], "at least 300ms"),
        (&["lock", "n", "--ttl", "soon", "--", "true"][..], "invalid value 'soon' for '--ttl <DURATION>'"),
        (&["lock", "n", "-E", "256", "--", "true"][..], "invalid value '256' for '--conflict-exit-code <CODE>'"),
        (&["lock", "n", "m", "--", "true"][..], "unexpected argument 'm' found"),
    ] {
        let text = error(args);
        assert!(text.contains(says), "{args:?}: {text}");
    }
}

#[test]
fn a_similar_option_is_suggested() {
    let text = error(&["lock", "n", "--tll", "5s", "--", "true"]);
    assert!(text.lines().next().unwrap().contains("a similar argument exists: '--ttl'"), "{text}");
    let text = error(&["stauts"]);
    assert!(text.contains("unrecognized subcommand 'stauts'") && text.contains("'status'"), "{text}");
}

#[test]
fn status_cluster_takes_no_lock_name() {
    let s = status(&["status", "--cluster", "--server", "http://a:1,http://b:2"]);
    assert_eq!((s.cluster, s.json, s.name), (true, false, None));
    assert_eq!(s.target.server, "http://a:1,http://b:2");
    let s = status(&["status", "--json", "--cluster"]);
    assert_eq!((s.cluster, s.json), (true, true));
    assert!(!status(&["status", "a"]).cluster);
    for args in [&["status", "--cluster", "nightly"][..], &["status", "nightly", "--cluster"][..]] {
        let text = error(args);
        assert!(text.contains("cannot be used with"), "{args:?}: {text}");
    }
}

#[test]
fn status_and_release_take_their_arguments() {
    let s = status(&["status", "--json", "a"]);
    assert_eq!((s.name.as_deref(), s.json), (Some("a"), true));
    assert_eq!(status(&["status"]).name, None);
    assert!(error(&["status", "a", "b"]).contains("unexpected argument 'b'"));
    let r = release(&["release", "a", "T", "--key", "k"]);
    assert_eq!((r.name.as_str(), r.ticket.as_str(), r.target.key.as_deref()), ("a", "T", Some("k")));
    assert!(error(&["release", "a"]).contains("<TICKET>"));
    assert!(error(&["release", "a", "T", "x"]).contains("unexpected argument 'x'"));
    // A ticket may start with '-'; after `--`, so may the lock's name.
    assert_eq!(release(&["release", "a", "-Tx"]).ticket, "-Tx");
    let r = release(&["release", "--", "-n", "-T"]);
    assert_eq!((r.name.as_str(), r.ticket.as_str()), ("-n", "-T"));
}

#[test]
fn server_subcommands_take_their_arguments() {
    assert_eq!(parse(&["serve"]).unwrap(), Command::Serve { config: None });
    for flag in ["-c", "--config"] {
        assert_eq!(parse(&["serve", flag, "f.toml"]).unwrap(), Command::Serve { config: Some("f.toml".into()) });
    }
    assert_eq!(parse(&["serve", "--config=f.toml"]).unwrap(), Command::Serve { config: Some("f.toml".into()) });
    assert_eq!(parse(&["check-config", "f.toml"]).unwrap(), Command::CheckConfig { file: "f.toml".into() });
    assert_eq!(
        parse(&["journal", "salvage", "a", "b"]).unwrap(),
        Command::Journal(Journal::Salvage { dir: "a".into(), new_dir: "b".into() })
    );
    assert_eq!(
        parse(&["child", "worker", "3", "42"]).unwrap(),
        Command::Child(Child::Worker { slot: 3, master_pid: 42 })
    );
    assert_eq!(parse(&["completions", "zsh"]).unwrap(), Command::Completions { shell: Shell::Zsh });
    assert!(error(&["check-config"]).contains("<FILE>"));
    assert!(error(&["child", "keeper", "x"]).contains("invalid value 'x'"));
}

#[test]
fn every_mistake_is_at_most_three_lines_ending_with_the_help_hint() {
    for (args, hint) in [
        (&[][..], "leasehold --help"),
        (&["frobnicate"][..], "leasehold --help"),
        (&["--frobnicate"][..], "leasehold --help"),
        (&["lock", "n", "--ttl", "soon", "--", "true"][..], "leasehold lock --help"),
        (&["lock", "n", "--tll", "5s", "--", "true"][..], "leasehold lock --help"),
        (&["lock"][..], "leasehold lock --help"),
        (&["status", "--cluster", "n"][..], "leasehold status --help"),
        (&["journal"][..], "leasehold journal --help"),
        (&["journal", "verify"][..], "leasehold journal verify --help"),
        (&["completions", "tcsh"][..], "leasehold completions --help"),
        (&["serve", "--config"][..], "leasehold serve --help"),
    ] {
        let text = error(args);
        let lines: Vec<&str> = text.lines().collect();
        assert!((2..=3).contains(&lines.len()), "{args:?}: {text}");
        assert!(lines[0].starts_with("leasehold: "), "{args:?}: {text}");
        assert_eq!(lines[lines.len() - 1], format!("For more information, try '{hint}'."), "{args:?}: {text}");
    }
}

#[test]
fn every_subcommand_has_its_own_help() {
    let mut paths: Vec<Vec<String>> = Vec::new();
    let root = command();
    for sub in root.get_subcommands().filter(|s| s.get_name() != "help") {
        paths.push(vec![sub.get_name().to_string()]);
        for nested in sub.get_subcommands().filter(|s| s.get_name() != "help") {
            paths.push(vec![sub.get_name().to_string(), nested.get_name().to_string()]);
        }
    }
    assert!(paths.len() >= 12, "{paths:?}");
    for path in paths {
        let words: Vec<&str> = path.iter().map(String::as_str).collect();
        for args in [[&words[..], &["--help"]].concat(), [&["help"], &words[..]].concat()] {
            let e = parse(&args).expect_err("help is an early exit");
            assert_eq!(e.kind(), ErrorKind::DisplayHelp, "{args:?}");
            let text = e.render().to_string();
            assert!(text.contains(&format!("Usage: leasehold {}", words.join(" "))), "{args:?}: {text}");
        }
    }
}

#[test]
fn version_names_the_build() {
    let e = parse(&["--version"]).expect_err("version is an early exit");
    assert_eq!(e.kind(), ErrorKind::DisplayVersion);
    assert_eq!(e.render().to_string(), format!("leasehold {} (build {})\n", version::VERSION, version::build()));
    assert_eq!(parse(&["version"]).unwrap(), Command::Version);
}

#[test]
fn man_page_has_every_section_and_subcommand_but_no_hidden_one() {
    let page = man_page().unwrap();
    for section in
        [".SH NAME", ".SH SYNOPSIS", ".SH DESCRIPTION", ".SH COMMANDS", ".SH \"EXIT STATUS\"", ".SH ENVIRONMENT"]
    {
        assert!(page.contains(section), "{section} missing");
    }
    for sub in ["lock", "status", "release", "serve", "check\\-config", "journal verify", "journal salvage"] {
        assert!(page.contains(&format!(".SS \"leasehold {sub}\"")), "{sub} missing");
    }
    assert!(page.contains("conflict\\-exit\\-code"), "the lock options are documented");
    assert!(!page.contains("leasehold child") && !page.contains("master_pid"), "the child roles are hidden");
}

#[test]
fn completions_register_the_program_for_each_shell() {
    for (shell, says) in [
        (Shell::Bash, "complete -F _leasehold"),
        (Shell::Zsh, "#compdef leasehold"),
        (Shell::Fish, "complete -c leasehold"),
    ] {
        let script = String::from_utf8(completions(shell)).unwrap();
        assert!(script.contains(says), "{shell}: {script}");
        assert!(script.contains("conflict-exit-code"), "{shell}: the options are completed");
        assert!(!script.contains("child"), "{shell}: the hidden roles are not offered");
    }
}
