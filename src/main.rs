//! The `leasehold` binary: argv (parsed by [`leasehold::cli`]) → subcommand. Exit codes: 0
//! success, 1 runtime failure, 2 bad usage or invalid configuration; `lock` also 75 (or
//! its `--conflict-exit-code`: not acquired in time), 69 (server unreachable) or its
//! command's own; `status --cluster` 69 when the cluster has no one leader that every node
//! that answered names; `journal verify` 1 when the keeper would refuse the directory
//! (corruption, or a file it cannot read).

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use leasehold::cli::{self, Child, Command, Journal, EXIT_USAGE};
use leasehold::client;
use leasehold::config::{Config, ConfigError};
use leasehold::journal::inspect::{self, InspectError};
use leasehold::process::key_files;
use leasehold::process::logging::stderr_prefix;
use leasehold::version;
use log::Level;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let parsed = match cli::parse_from(&args) {
        Ok(parsed) => parsed,
        Err(e) if cli::is_help_or_version(&e) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprint!("{}", cli::short_error(&e, &args));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match parsed.command {
        Command::Serve { config } => serve(config),
        Command::CheckConfig { file } => check_config(&file),
        Command::Lock(args) => ExitCode::from(client::lock(args)),
        Command::Status(args) => ExitCode::from(client::status(args)),
        Command::Release(args) => ExitCode::from(client::release_command(args)),
        Command::Journal(Journal::Verify { dir }) => journal_verify(&dir),
        Command::Journal(Journal::Salvage { dir, new_dir }) => journal_salvage(&dir, &new_dir),
        Command::Completions { shell } => print_bytes(&cli::completions(shell)),
        Command::Man => match cli::man_page() {
            Ok(page) => print_bytes(page.as_bytes()),
            Err(e) => {
                eprintln!("leasehold: cannot render the man page: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Version => {
            println!("leasehold {} (build {})", version::VERSION, version::build());
            ExitCode::SUCCESS
        }
        Command::Child(Child::Keeper { master_pid }) => exit_code(leasehold::process::keeper::run(master_pid)),
        Command::Child(Child::Courier { master_pid }) => exit_code(leasehold::process::courier::run(master_pid)),
        Command::Child(Child::Worker { slot, master_pid }) => {
            exit_code(leasehold::process::worker::run(slot, master_pid))
        }
    }
}

/// Writes generated text (a completion script, the man page) to standard output; a closed
/// pipe (`| head`) is not worth a panic.
fn print_bytes(bytes: &[u8]) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
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
    // The TLS listeners' files, read and checked as each worker will at its start.
    if let Some(files) = &config.tls.files {
        if let Err(problems) = leasehold::process::tls::ListenerTls::load(files, config.tls.client_auth) {
            report_problems(&source(), &problems);
            return Err(ExitCode::from(EXIT_USAGE));
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
            eprintln!("For more information, try 'leasehold journal --help'.");
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

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
