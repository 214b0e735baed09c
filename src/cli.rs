//! The `leasehold` command line: every subcommand and option, declared once with clap's
//! derive, and what is generated from that one declaration so it never drifts from it: the
//! per-subcommand help, the shell completion scripts (`leasehold completions SHELL`) and
//! the man page (`leasehold man`). A mistyped command line gets a short error (at most
//! three lines, the last a hint to try `--help`) instead of the whole usage.
//!
//! Parsing only: running a subcommand is `main.rs`'s (and [`crate::client`]'s). The client
//! subcommands' options live beside the client, in [`crate::client::args`].

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::PathBuf;

use clap::error::ErrorKind;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use clap_complete::Shell;

use crate::client::args::{LockArgs, ReleaseArgs, StatusArgs};
use crate::version;

/// The program's name, as the completion scripts register it.
pub const BIN: &str = "leasehold";

/// Exit status for bad usage or an invalid configuration (systemd: `RestartPreventExitStatus=2`).
pub const EXIT_USAGE: u8 = 2;

/// What every exit status of the binary means (the man page's EXIT STATUS section and the
/// top-level `--help`).
const EXIT_STATUS: &str = "Exit status: 0 success; 1 runtime failure; 2 bad usage or invalid \
    configuration. `lock`: its command's own, 75 (or --conflict-exit-code) when the lock could not \
    be had in time, 69 when the server cannot be reached. `status --cluster`: 69 when the cluster \
    has no one leader that every node that answered names. `journal verify`: 1 when the keeper \
    would refuse the directory.";

/// `leasehold`: fast, fair, durable locks and semaphores over HTTP.
#[derive(Debug, Clone, PartialEq, Eq, Parser)]
#[command(
    name = BIN,
    about = "Fast, fair, durable locks and semaphores over HTTP",
    long_about = "Fast, fair, durable locks and semaphores over HTTP.\n\n\
        One binary: `leasehold serve` runs the server; `lock`, `status` and `release` are its \
        command-line client. Client commands take --server URL (or LEASEHOLD_URL; default \
        http://127.0.0.1:8080) and --key KEY (or LEASEHOLD_KEY).",
    after_help = EXIT_STATUS,
    subcommand_required = true,
    args_override_self = true,
    max_term_width = 100
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Run the server (on the embedded defaults without --config)
    Serve {
        /// The configuration file (config/leasehold.toml documents every key)
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file (and the LEASEHOLD_* variables); exit 0 or 2
    ///
    /// Lists every problem with its key, and the variable it came from; reads and checks
    /// the peer link's TLS files. Exit status 0 when valid, 2 otherwise.
    CheckConfig {
        /// The configuration file
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Run a command while holding a lease on a lock
    ///
    /// Takes a lease on NAME, runs CMD while it holds it, renews it every third of the TTL
    /// and releases it when CMD ends. CMD gets LEASEHOLD_FENCE, LEASEHOLD_TICKET and
    /// LEASEHOLD_LOCK in its environment; SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and
    /// SIGUSR2 are passed on to it. If the lease is lost, CMD gets SIGTERM, then SIGKILL
    /// after --grace.
    ///
    /// Exit status: CMD's own (128 + the signal that ended it); 75, or --conflict-exit-code,
    /// when someone else holds the lock past --wait (CMD never ran); 69 when the server
    /// cannot be reached; 2 for a bad command line.
    #[command(after_help = "Example, a cron job that skips silently while its last run still holds the lock:\n  \
        leasehold lock -q -E 0 --ttl 1m nightly-report -- /usr/local/bin/report")]
    Lock(LockArgs),
    /// Show locks, holders and queues (a table, or JSON), or where each node of a cluster stands
    ///
    /// With --cluster: every server of --server is asked for GET /readyz at once (2 s each)
    /// and shown as a row (node, role, epoch, applied, lag, the leader it names); a server
    /// that cannot be reached or answers non-200 is a row saying down (REASON). Exit status
    /// 0 when exactly one node leads and every node that answered names it, 69 otherwise.
    Status(StatusArgs),
    /// Release a lease (for example one a dead job left)
    Release(ReleaseArgs),
    /// Check or salvage the journal of a data directory
    #[command(subcommand)]
    Journal(Journal),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    ///
    /// For bash: `source <(leasehold completions bash)`, or save it as
    /// /usr/share/bash-completion/completions/leasehold.
    Completions {
        /// The shell
        #[arg(value_name = "SHELL")]
        shell: Shell,
    },
    /// Print the man page (roff; `leasehold man > leasehold.1`, then `man ./leasehold.1`)
    Man,
    /// Print the version and build stamp (as --version does)
    Version,
    /// A process started by the master (not for people to run)
    #[command(subcommand, hide = true)]
    Child(Child),
}

/// `leasehold journal …`
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Journal {
    /// Read the journal in DIR without changing it and report every torn or corrupt spot
    ///
    /// Reads every file and its records and reports every torn or corrupt spot with its
    /// offset. Exit status 0: clean, or only a torn tail (the keeper cuts it at start); 1:
    /// corrupt (the keeper refuses to start) or unreadable; 2: bad usage.
    Verify {
        /// The data directory (server.data_dir)
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// Copy every valid record of DIR into NEW_DIR, leaving DIR as it is
    ///
    /// Copies every valid record of DIR (and its snapshot, if valid) into NEW_DIR (new or
    /// empty); a keeper starts from NEW_DIR. Exit status 0 done, 1 failed, 2 bad usage.
    Salvage {
        /// The damaged data directory
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        /// Where the valid records go (new or empty)
        #[arg(value_name = "NEW_DIR")]
        new_dir: PathBuf,
    },
}

/// `leasehold child …`: the roles the master starts, with its pid.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Child {
    /// The keeper (the lease table's one owner)
    Keeper {
        /// The master's pid
        master_pid: i32,
    },
    /// The courier (the outbox's deliveries)
    Courier {
        /// The master's pid
        master_pid: i32,
    },
    /// A worker in its slot
    Worker {
        /// The worker slot
        slot: u32,
        /// The master's pid
        master_pid: i32,
    },
}

/// The whole command line as clap sees it, with the version and build stamp of this binary
/// (read at run time: a stamped copy reports its own build).
pub fn command() -> clap::Command {
    Cli::command().version(format!("{} (build {})", version::VERSION, version::build()))
}

/// Parses `args` (the program's name first).
pub fn parse_from<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut cmd = command();
    let matches = cmd.try_get_matches_from_mut(args)?;
    Cli::from_arg_matches(&matches).map_err(|e| e.format(&mut cmd))
}

/// Whether a parse "error" is a request for help or the version (printed on standard output,
/// exit status 0) rather than a mistake.
pub fn is_help_or_version(err: &clap::Error) -> bool {
    matches!(err.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion)
}

/// A command-line mistake in at most three lines: what is wrong (with clap's tip, such as
/// a similar option, when it has one), the usage of the subcommand when clap gives it, and a
/// hint naming the subcommand's `--help`. `args` is the command line that was refused (the
/// program's name first); it tells which subcommand's help to point to.
pub fn short_error(err: &clap::Error, args: &[OsString]) -> String {
    let root = command();
    let (cmd, path) = deepest(&root, args);
    let rendered = err.render().to_string();
    let mut message = String::new();
    let mut usage: Option<String> = None;
    for (i, paragraph) in rendered.split("\n\n").enumerate() {
        let lines: Vec<&str> = paragraph.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        let Some(first) = lines.first() else {
            continue;
        };
        if i == 0 {
            let joined = lines.join(" ");
            message = joined.strip_prefix("error: ").unwrap_or(&joined).to_string();
        } else if let Some(tip) = first.strip_prefix("tip: ") {
            // The first tip only (a similar option, say): the others are about `--`.
            if !message.contains("(tip") {
                let _ = write!(message, " ({tip})");
            }
        } else if first.starts_with("Usage: ") {
            usage = Some(first.to_string());
        }
    }
    if err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        // clap rendered the whole help: say what is missing instead.
        let names: Vec<&str> = documented(cmd).map(clap::Command::get_name).collect();
        message = format!("missing a subcommand: {}", names.join(", "));
    }
    let mut out = format!("{BIN}: {message}\n");
    if let Some(usage) = usage {
        out.push_str(&usage);
        out.push('\n');
    }
    let _ = writeln!(out, "For more information, try '{path} --help'.");
    out
}

/// The deepest command named at the start of `args` (`leasehold journal verify`): the one
/// whose help applies, and its full name.
fn deepest<'a>(root: &'a clap::Command, args: &[OsString]) -> (&'a clap::Command, String) {
    let mut cmd = root;
    let mut path = BIN.to_string();
    for arg in args.iter().skip(1) {
        let Some(sub) = arg.to_str().and_then(|name| cmd.find_subcommand(name)) else {
            break;
        };
        path.push(' ');
        path.push_str(sub.get_name());
        cmd = sub;
    }
    (cmd, path)
}

/// The completion script for `shell`: every subcommand a person may run (clap's generators
/// would offer the hidden `child` too, so the script is made from a copy without it).
pub fn completions(shell: Shell) -> Vec<u8> {
    let full = command();
    let mut cmd = clap::Command::new(BIN)
        .version(full.get_version().unwrap_or_default().to_string())
        .subcommands(documented(&full).cloned());
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, BIN, &mut out);
    out
}

/// The man page, in roff: NAME, SYNOPSIS, DESCRIPTION and OPTIONS of `leasehold`, then one
/// subsection per subcommand (its synopsis, description and options), EXIT STATUS,
/// ENVIRONMENT and VERSION. One self-contained page rather than one per subcommand.
pub fn man_page() -> Result<String, std::io::Error> {
    let mut cmd = command().disable_help_subcommand(true);
    cmd.build();
    let man = clap_mangen::Man::new(cmd.clone());
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    out.extend_from_slice(b".SH COMMANDS\n");
    for sub in documented(&cmd) {
        man_subsection(sub, &mut out)?;
    }
    out.extend_from_slice(b".SH \"EXIT STATUS\"\n");
    out.extend_from_slice(roff_text(EXIT_STATUS).as_bytes());
    out.extend_from_slice(b".SH ENVIRONMENT\n");
    for (name, what) in [
        ("LEASEHOLD_URL", "The server for client commands when --server is not given."),
        ("LEASEHOLD_KEY", "The API key for client commands when --key is not given."),
        ("LEASEHOLD_*", "The server's configuration keys, one variable each (config/leasehold.toml names them); a variable wins over the file."),
    ] {
        out.extend_from_slice(format!(".TP\n\\fB{}\\fR\n{}", roff_escape(name), roff_text(what)).as_bytes());
    }
    man.render_version_section(&mut out)?;
    String::from_utf8(out).map_err(std::io::Error::other)
}

/// One subcommand's part of the man page: a subsection named by its full name, then its
/// synopsis, description, options and extra text (clap_mangen's sections, each heading made
/// a paragraph break); nested subcommands follow as subsections of their own.
fn man_subsection(sub: &clap::Command, out: &mut Vec<u8>) -> Result<(), std::io::Error> {
    let name = sub.get_bin_name().unwrap_or(sub.get_name());
    out.extend_from_slice(format!(".SS \"{}\"\n", roff_escape(name)).as_bytes());
    let man = clap_mangen::Man::new(sub.clone());
    let mut part = Vec::new();
    man.render_synopsis_section(&mut part)?;
    man.render_description_section(&mut part)?;
    if sub.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut part)?;
    }
    if sub.get_after_help().is_some() {
        man.render_extra_section(&mut part)?;
    }
    let text = String::from_utf8(part).map_err(std::io::Error::other)?;
    for line in text.lines() {
        out.extend_from_slice(if line.starts_with(".SH ") { b".PP" } else { line.as_bytes() });
        out.push(b'\n');
    }
    for nested in documented(sub) {
        man_subsection(nested, out)?;
    }
    Ok(())
}

/// The subcommands of `cmd` a reader is meant to see (not the hidden ones, not `help`).
fn documented(cmd: &clap::Command) -> impl Iterator<Item = &clap::Command> {
    cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help")
}

/// Escapes text for roff: backslashes, and hyphens as real minus signs (so `--help` is
/// searchable and copyable).
fn roff_escape(text: &str) -> String {
    text.replace('\\', "\\e").replace('-', "\\-")
}

/// Plain text as roff lines: escaped, no line starting with a control character.
fn roff_text(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let line = roff_escape(line);
        if line.starts_with('.') || line.starts_with('\'') {
            out.push_str("\\&");
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests;
