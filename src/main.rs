//! The `leasehold` binary: argv → subcommand. Exit codes: 0 success, 1 runtime failure,
//! 2 bad usage or invalid configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use leasehold::config::{Config, ConfigError};

const USAGE: &str = "\
leasehold: fast, fair, durable locks over HTTP

usage:
  leasehold serve [--config FILE]     serve (embedded defaults without --config)
  leasehold check-config FILE         validate FILE (and LEASEHOLD_* variables); exit 0 or 2
  leasehold --version | --help
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
        ["child", "keeper", master_pid] => child("keeper", None, master_pid),
        ["child", "worker", slot, master_pid] => child("worker", Some(slot), master_pid),
        ["--version" | "-V" | "version"] => {
            println!("leasehold {}", env!("CARGO_PKG_VERSION"));
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

/// Reads and validates the configuration (returning the text it came from); on failure
/// prints every problem.
fn load_config(file: Option<&PathBuf>) -> Result<(Config, Option<String>), ExitCode> {
    let text = match file {
        None => None,
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => Some(text),
            Err(e) => {
                eprintln!("leasehold: cannot read {}: {e}", path.display());
                return Err(ExitCode::from(EXIT_USAGE));
            }
        },
    };
    let config = Config::load(text.as_deref(), &leasehold::process::environment()).map_err(|problems| {
        let source = file.map_or_else(|| "the embedded defaults".to_string(), |p| p.display().to_string());
        report_problems(&source, &problems);
        ExitCode::from(EXIT_USAGE)
    })?;
    for warning in &config.warnings {
        eprintln!("leasehold: warning: {warning}");
    }
    Ok((config, text))
}

fn report_problems(source: &str, problems: &[ConfigError]) {
    let s = if problems.len() == 1 { "" } else { "s" };
    eprintln!("leasehold: {source}: {} problem{s}:", problems.len());
    for problem in problems {
        eprintln!("  - {problem}");
    }
}

fn check_config(file: &PathBuf) -> ExitCode {
    match load_config(Some(file)) {
        Ok(_) => {
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

/// A child process started by the master (not for people to run).
fn child(role: &str, slot: Option<&str>, master_pid: &str) -> ExitCode {
    let Ok(master_pid) = master_pid.parse::<i32>() else {
        eprintln!("leasehold: child: bad master pid {master_pid:?}");
        return ExitCode::from(EXIT_USAGE);
    };
    match (role, slot.map(str::parse::<u32>)) {
        ("keeper", None) => exit_code(leasehold::process::keeper::run(master_pid)),
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
