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

/// Reads and validates the configuration; on failure prints every problem.
fn load_config(file: Option<&PathBuf>) -> Result<Config, ExitCode> {
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
    let env: Vec<(String, String)> =
        std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))).collect();
    let config = Config::load(text.as_deref(), &env).map_err(|problems| {
        let source = file.map_or_else(|| "the embedded defaults".to_string(), |p| p.display().to_string());
        report_problems(&source, &problems);
        ExitCode::from(EXIT_USAGE)
    })?;
    for warning in &config.warnings {
        eprintln!("leasehold: warning: {warning}");
    }
    Ok(config)
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
    let config = match load_config(file.as_ref()) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let listen: Vec<String> = config.server.listen.iter().map(ToString::to_string).collect();
    println!(
        "leasehold: configuration is valid: listen {}, data in {}, {} API key(s), fsync {:?}",
        listen.join(", "),
        config.server.data_dir.display(),
        config.auth.keys.len(),
        config.journal.fsync,
    );
    println!("leasehold: this build has the lease table and configuration only; the HTTP server processes are not built yet, so nothing is served");
    ExitCode::SUCCESS
}
