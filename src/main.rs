//! The `leasehold` binary: argv → subcommand. Exit codes: 0 success, 1 runtime failure,
//! 2 bad usage or invalid configuration; `lock` also 75 (not acquired in time), 69 (server
//! unreachable) or its command's own; `status --cluster` 69 when the cluster has no one
//! leader that every node that answered names; `journal verify` 1 when the keeper would
//! refuse the directory (corruption, or a file it cannot read).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use leasehold::client;
use leasehold::config::{Config, ConfigError};
use leasehold::journal::inspect::{self, InspectError};
use leasehold::process::key_files;
use leasehold::process::logging::stderr_prefix;
use leasehold::version;
use log::Level;

const USAGE: &str = "\
leasehold: fast, fair, durable locks over HTTP

usage:
  leasehold serve [--config FILE]     serve (embedded defaults without --config)
  leasehold check-config FILE         validate FILE (and LEASEHOLD_* variables); exit 0 or 2
  leasehold lock NAME [options] -- CMD [ARGS...]
                                      run CMD while holding a lease on NAME
      --ttl 30s      lease TTL, renewed every third of it
      --wait 0s      how long to wait in the lock's queue (0: try once)
      --limit 1      permits of the lock (a semaphore above 1)
      --weight 1     permits this run takes
      --owner LABEL  label shown to others
      --grace 10s    SIGTERM to SIGKILL when the lease is lost
    CMD gets LEASEHOLD_FENCE, LEASEHOLD_TICKET and LEASEHOLD_LOCK; signals are passed on to
    it. Exit status: CMD's own; 75 if the lock could not be had in time; 69 if the server
    cannot be reached.
  leasehold status [NAME] [--json]    locks, holders and queues (a table, or JSON)
  leasehold status --cluster [--json] every server of --server (the nodes of a cluster), asked
                                      GET /readyz at once (2 s each): node, role, epoch,
                                      applied, lag and the leader it names; a server that
                                      cannot be reached or answers non-200 is a row saying
                                      down (REASON). Exit 0 when exactly one node leads and
                                      every node that answered names it; 69 otherwise (as for
                                      a server that cannot be reached)
  leasehold release NAME TICKET       release a lease (for example one a dead job left)
  leasehold journal verify DIR        read the journal in DIR (server.data_dir) without changing
                                      it: every file, its records, every torn or corrupt spot
                                      with its offset. Exit 0: clean, or only a torn tail (the
                                      keeper cuts it at start); 1: corrupt (the keeper refuses
                                      to start) or unreadable; 2: bad usage
  leasehold journal salvage DIR NEW_DIR
                                      copy every valid record of DIR (and its snapshot, if
                                      valid) into NEW_DIR (new or empty), leaving DIR as it is;
                                      a keeper starts from NEW_DIR. Exit 0 done, 1 failed, 2 bad
                                      usage
  leasehold --version | --help       the version and build stamp (dev unless stamped); usage

  Client commands take --server URL (or LEASEHOLD_URL; default http://127.0.0.1:8080)
  and --key KEY (or LEASEHOLD_KEY).
";

/// Exit code for bad usage or an invalid configuration (systemd: RestartPreventExitStatus=2).
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    match argv.as_slice() {
        ["serve"] => serve(None),
        ["serve", "--config", file] | ["serve", "-c", file] => serve(Some(PathBuf::from(file))),
        ["check-config", file] => check_config(&PathBuf::from(file)),
        ["lock", rest @ ..] => client_command(rest, client::args::parse_lock, client::lock),
        ["status", rest @ ..] => client_command(rest, client::args::parse_status, client::status),
        ["release", rest @ ..] => client_command(rest, client::args::parse_release, client::release_command),
        ["journal", "verify", dir] => journal_verify(Path::new(dir)),
        ["journal", "salvage", dir, new_dir] => journal_salvage(Path::new(dir), Path::new(new_dir)),
        ["child", "keeper", master_pid] => child("keeper", None, master_pid),
        ["child", "courier", master_pid] => child("courier", None, master_pid),
        ["child", "worker", slot, master_pid] => child("worker", Some(slot), master_pid),
        ["--version" | "-V" | "version"] => {
            println!("leasehold {} (build {})", version::VERSION, version::build());
            ExitCode::SUCCESS
        }
        ["--help" | "-h" | "help"] => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprint!("leasehold: unrecognised arguments: {}\n\n{USAGE}", argv.join(" "));
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// Runs a client command: its arguments (with `LEASEHOLD_URL` and `LEASEHOLD_KEY`), then
/// the command itself.
fn client_command<A>(args: &[&str], parse: client::args::Parser<A>, run: fn(A) -> u8) -> ExitCode {
    let url = std::env::var("LEASEHOLD_URL").ok();
    let key = std::env::var("LEASEHOLD_KEY").ok();
    match parse(args, url.as_deref(), key.as_deref()) {
        Ok(parsed) => ExitCode::from(run(parsed)),
        Err(e) => {
            eprintln!("leasehold: {e}\n\n{USAGE}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// Reads and validates the configuration (returning the text it came from); on failure
/// prints every problem.
fn load_config(file: Option<&PathBuf>) -> Result<(Config, Option<String>), ExitCode> {
    let text = match file {
        None => None,
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => Some(text),
            Err(e) => {
                eprintln!("{}leasehold: cannot read {}: {e}", stderr_prefix(Level::Error), path.display());
                return Err(ExitCode::from(EXIT_USAGE));
            }
        },
    };
    let source = || file.map_or_else(|| "the embedded defaults".to_string(), |p| p.display().to_string());
    let config = key_files::load(text.as_deref(), &leasehold::process::environment()).map_err(|problems| {
        report_problems(&source(), &problems);
        ExitCode::from(EXIT_USAGE)
    })?;
    // The files the configuration names: the peer link's TLS files are read and checked.
    if let Some(peer) = config.cluster.as_ref().and_then(|c| c.peer.as_ref()) {
        if let Some(files) = &peer.tls {
            if let Err(problems) = leasehold::process::tls::PeerTls::load(files, &peer.advertise) {
                report_problems(&source(), &problems);
                return Err(ExitCode::from(EXIT_USAGE));
            }
        }
    }
    Ok((config, text))
}

fn report_problems(source: &str, problems: &[ConfigError]) {
    let s = if problems.len() == 1 { "" } else { "s" };
    // Under journald each line is its own entry: each carries the priority.
    let error = stderr_prefix(Level::Error);
    eprintln!("{error}leasehold: {source}: {} problem{s}:", problems.len());
    for problem in problems {
        eprintln!("{error}  - {problem}");
    }
}

fn check_config(file: &PathBuf) -> ExitCode {
    match load_config(Some(file)) {
        Ok((config, _)) => {
            // (`serve` logs them, in the configured log format.)
            for warning in &config.warnings {
                eprintln!("{}leasehold: warning: {warning}", stderr_prefix(Level::Warn));
            }
            println!("leasehold: {}: configuration is valid", file.display());
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn serve(file: Option<PathBuf>) -> ExitCode {
    let (config, text) = match load_config(file.as_ref()) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    exit_code(leasehold::process::master::run(config, file, text))
}

/// Exit code of `journal verify` when the keeper would refuse the directory.
const EXIT_CORRUPT: u8 = 1;

fn inspect_failed(e: &InspectError) -> ExitCode {
    eprintln!("leasehold: {e}");
    match e {
        InspectError::Usage(_) => {
            eprint!("\n{USAGE}");
            ExitCode::from(EXIT_USAGE)
        }
        InspectError::Store(_) => ExitCode::FAILURE,
    }
}

fn journal_verify(dir: &Path) -> ExitCode {
    match inspect::verify(dir) {
        Ok(report) => {
            print!("{report}");
            if report.is_corrupt() {
                ExitCode::from(EXIT_CORRUPT)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => inspect_failed(&e),
    }
}

fn journal_salvage(dir: &Path, new_dir: &Path) -> ExitCode {
    match inspect::salvage(dir, new_dir) {
        Ok(salvaged) => {
            print!("{salvaged}");
            ExitCode::SUCCESS
        }
        Err(e) => inspect_failed(&e),
    }
}

/// A child process started by the master (not for people to run).
fn child(role: &str, slot: Option<&str>, master_pid: &str) -> ExitCode {
    let Ok(master_pid) = master_pid.parse::<i32>() else {
        eprintln!("leasehold: child: bad master pid {master_pid:?}");
        return ExitCode::from(EXIT_USAGE);
    };
    match (role, slot.map(str::parse::<u32>)) {
        ("keeper", None) => exit_code(leasehold::process::keeper::run(master_pid)),
        ("courier", None) => exit_code(leasehold::process::courier::run(master_pid)),
        ("worker", Some(Ok(slot))) => exit_code(leasehold::process::worker::run(slot, master_pid)),
        _ => {
            eprintln!("leasehold: child: unknown role {role:?}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
