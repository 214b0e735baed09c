//! Logging for every process: one line per event on stderr (journald under systemd), tagged
//! with the process's role and pid so interleaved lines from master, workers and keeper can be
//! told apart.

use std::io::Write;

/// Starts logging as `role` at `level` (`off`, `error`, `warn`, `info`, `debug`, `trace`).
pub fn init(role: &str, level: &str) {
    let filter = level.parse::<log::LevelFilter>().unwrap_or(log::LevelFilter::Info);
    let tag = format!("{role}[{}]", std::process::id());
    // The logger passes everything; the global maximum filters, so a reload can change it.
    let _ = env_logger::Builder::new()
        .filter_level(log::LevelFilter::Trace)
        .format(move |buf, record| {
            writeln!(buf, "{} {:<5} {tag}: {}", buf.timestamp_millis(), record.level(), record.args())
        })
        .try_init();
    log::set_max_level(filter);
}

/// Changes the level (on reload).
pub fn set_level(level: &str) {
    log::set_max_level(level.parse::<log::LevelFilter>().unwrap_or(log::LevelFilter::Info));
}
