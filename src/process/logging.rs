//! Logging for every process: one line per event on stderr, tagged with the process's role
//! and pid so interleaved lines from master, workers, keeper and courier can be told apart.
//! It owns the line format and nothing else: what is logged, and at which level, is each
//! caller's business.
//!
//! - **Text** (`server.log_format = "text"`, the default): `TIMESTAMP LEVEL role[pid]: message`,
//!   then the event's fields as `key=value` (the access log's, for one).
//! - **JSON** (`"json"`): one object per line with `ts`, `level`, `process`, `pid`, `target`,
//!   `msg` and the event's fields, for log shippers.
//! - **Under journald.** When systemd connected stderr to the journal it says so in
//!   `JOURNAL_STREAM` (`DEVICE:INODE` of that stream); when those match stderr's (a child
//!   whose stderr was redirected elsewhere must not believe it), every line starts with its
//!   syslog priority `<N>` (error 3, warning 4, info 6, debug and trace 7), which journald
//!   strips and stores, so `journalctl -p warning` filters. A text line then carries no
//!   timestamp: journald stamps each line itself. A JSON line keeps `ts`, so that a record
//!   means the same wherever it is read.
//!
//! A message never spans lines: a line break inside one is written as `\n`, so every line
//! is one event (and, under journald, has its priority).
//!
//! The format can change on reload ([`reconfigure`]); whether stderr is the journal is
//! decided once, at [`init`].

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use crate::config::{LogFormat, ServerConfig};

/// The line format in force (a [`LogFormat`] as its index), changed by a reload.
static FORMAT: AtomicU8 = AtomicU8::new(0);
/// Whether stderr is the journal (set once, at [`init`]).
static JOURNAL: AtomicBool = AtomicBool::new(false);

fn format_index(format: LogFormat) -> u8 {
    match format {
        LogFormat::Text => 0,
        LogFormat::Json => 1,
    }
}

fn current_format() -> LogFormat {
    if FORMAT.load(Ordering::Relaxed) == 1 {
        LogFormat::Json
    } else {
        LogFormat::Text
    }
}

/// Starts logging as `role` (`lh-master`, `lh-worker-0`, …) with the level and format of
/// `server`.
pub fn init(role: &str, server: &ServerConfig) {
    JOURNAL.store(stderr_is_journal(), Ordering::Relaxed);
    let role = role.to_string();
    let pid = std::process::id();
    // The logger passes everything; the global maximum filters, so a reload can change it.
    let _ = env_logger::Builder::new()
        .filter_level(log::LevelFilter::Trace)
        .format(move |buf, record| {
            let style = Style { format: current_format(), journal: JOURNAL.load(Ordering::Relaxed) };
            let ts = match style {
                Style { format: LogFormat::Text, journal: true } => String::new(),
                _ => buf.timestamp_millis().to_string(),
            };
            let event = Event {
                ts: &ts,
                level: record.level(),
                process: &role,
                pid,
                target: record.target(),
                msg: &record.args().to_string(),
                fields: &fields(record.key_values()),
            };
            buf.write_all(render(style, &event).as_bytes())
        })
        .try_init();
    // After the logger, which sets the global maximum to its own filter.
    reconfigure(server);
}

/// Applies a new configuration's level and format (on reload).
pub fn reconfigure(server: &ServerConfig) {
    log::set_max_level(server.log_level.parse::<log::LevelFilter>().unwrap_or(log::LevelFilter::Info));
    FORMAT.store(format_index(server.log_format), Ordering::Relaxed);
}

/// What to put before a line written to stderr without the logger (a command's own
/// messages, before logging starts) at `level`: its priority under journald, else nothing.
pub fn stderr_prefix(level: log::Level) -> String {
    if JOURNAL.load(Ordering::Relaxed) || stderr_is_journal() {
        format!("<{}>", priority(level))
    } else {
        String::new()
    }
}

/// Whether stderr is the stream systemd connected to the journal: `JOURNAL_STREAM` names
/// its device and inode, as sd-daemon(3) says to check.
// `dev_t` and `ino_t` are `u64` on most targets, not all.
#[allow(clippy::useless_conversion)]
fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM").and_then(|v| v.into_string().ok()) else { return false };
    let Some((dev, ino)) = parse_journal_stream(&stream) else { return false };
    nix::sys::stat::fstat(std::io::stderr().as_fd())
        .is_ok_and(|st| u64::try_from(st.st_dev).ok() == Some(dev) && u64::try_from(st.st_ino).ok() == Some(ino))
}

/// `DEVICE:INODE` (decimal) of `JOURNAL_STREAM`.
fn parse_journal_stream(text: &str) -> Option<(u64, u64)> {
    let (dev, ino) = text.trim().split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

/// The syslog priority of a level.
pub fn priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// How lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Style {
    format: LogFormat,
    /// Stderr is the journal.
    journal: bool,
}

/// One field's value: numbers stay numbers in JSON.
#[derive(Debug, Clone, PartialEq)]
enum FieldValue {
    Number(serde_json::Number),
    Text(String),
}

/// One event, as [`render`] takes it.
struct Event<'a> {
    /// RFC 3339 time (empty: none).
    ts: &'a str,
    level: log::Level,
    process: &'a str,
    pid: u32,
    target: &'a str,
    msg: &'a str,
    fields: &'a [(String, FieldValue)],
}

/// The event's structured fields (`log::info!(key = value; "message")`).
fn fields(source: &dyn log::kv::Source) -> Vec<(String, FieldValue)> {
    struct Collect(Vec<(String, FieldValue)>);
    impl<'kvs> log::kv::VisitSource<'kvs> for Collect {
        fn visit_pair(&mut self, key: log::kv::Key<'kvs>, value: log::kv::Value<'kvs>) -> Result<(), log::kv::Error> {
            let value = if let Some(n) = value.to_u64() {
                FieldValue::Number(n.into())
            } else if let Some(n) = value.to_i64() {
                FieldValue::Number(n.into())
            } else {
                FieldValue::Text(value.to_string())
            };
            self.0.push((key.as_str().to_string(), value));
            Ok(())
        }
    }
    let mut collect = Collect(Vec::new());
    let _ = source.visit(&mut collect);
    collect.0
}

/// Names a JSON line gives its own members; a field with one of these names is left out.
const RESERVED: &[&str] = &["ts", "level", "process", "pid", "target", "msg"];

/// The event as one line (with its newline).
fn render(style: Style, e: &Event<'_>) -> String {
    let mut line = String::with_capacity(96 + e.msg.len());
    if style.journal {
        let _ = write!(line, "<{}>", priority(e.level));
    }
    match style.format {
        LogFormat::Text => {
            if !e.ts.is_empty() {
                let _ = write!(line, "{} ", e.ts);
            }
            let _ = write!(line, "{:<5} {}[{}]: ", e.level, e.process, e.pid);
            push_one_line(&mut line, e.msg);
            for (key, value) in e.fields {
                line.push(' ');
                push_one_line(&mut line, key);
                line.push('=');
                match value {
                    FieldValue::Number(n) => {
                        let _ = write!(line, "{n}");
                    }
                    FieldValue::Text(t) if needs_quotes(t) => push_one_line(&mut line, &format!("{t:?}")),
                    FieldValue::Text(t) => push_one_line(&mut line, t),
                }
            }
        }
        LogFormat::Json => {
            let mut object = serde_json::Map::new();
            if !e.ts.is_empty() {
                object.insert("ts".into(), e.ts.into());
            }
            object.insert("level".into(), e.level.as_str().to_ascii_lowercase().into());
            object.insert("process".into(), e.process.into());
            object.insert("pid".into(), e.pid.into());
            object.insert("target".into(), e.target.into());
            object.insert("msg".into(), e.msg.into());
            for (key, value) in e.fields.iter().filter(|(k, _)| !RESERVED.contains(&k.as_str())) {
                let value = match value {
                    FieldValue::Number(n) => serde_json::Value::Number(n.clone()),
                    FieldValue::Text(t) => t.as_str().into(),
                };
                object.insert(key.clone(), value);
            }
            // Serialising a map of strings and numbers cannot fail; JSON escapes line breaks.
            line.push_str(&serde_json::Value::Object(object).to_string());
        }
    }
    line.push('\n');
    line
}

/// Appends `text` with its line breaks written as `\n` and `\r`.
fn push_one_line(line: &mut String, text: &str) {
    if !text.contains(['\n', '\r']) {
        line.push_str(text);
        return;
    }
    for c in text.chars() {
        match c {
            '\n' => line.push_str("\\n"),
            '\r' => line.push_str("\\r"),
            c => line.push(c),
        }
    }
}

/// Whether a text field's value must be quoted to read back as one `key=value`.
fn needs_quotes(value: &str) -> bool {
    value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '=')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event<'a>(level: log::Level, msg: &'a str, fields: &'a [(String, FieldValue)]) -> Event<'a> {
        Event {
            ts: "2025-01-02T03:04:05.678Z",
            level,
            process: "lh-worker-3",
            pid: 42,
            target: "leasehold::process::worker",
            msg,
            fields,
        }
    }

    #[test]
    fn priorities_are_the_syslog_ones() {
        let all = [log::Level::Error, log::Level::Warn, log::Level::Info, log::Level::Debug, log::Level::Trace];
        assert_eq!(all.map(priority), [3, 4, 6, 7, 7]);
    }

    #[test]
    fn journal_stream_is_device_colon_inode() {
        assert_eq!(parse_journal_stream("8:123456"), Some((8, 123456)));
        assert_eq!(parse_journal_stream(" 0:1\n"), Some((0, 1)));
        for bad in ["", "8", "8:", ":9", "a:b", "8:9:10", "-1:2"] {
            assert_eq!(parse_journal_stream(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn text_line_has_time_level_and_tag_and_under_journald_a_priority_instead_of_time() {
        let plain = Style { format: LogFormat::Text, journal: false };
        assert_eq!(
            render(plain, &event(log::Level::Info, "serving", &[])),
            "2025-01-02T03:04:05.678Z INFO  lh-worker-3[42]: serving\n"
        );
        let journal = Style { format: LogFormat::Text, journal: true };
        let mut e = event(log::Level::Warn, "careful", &[]);
        e.ts = "";
        assert_eq!(render(journal, &e), "<4>WARN  lh-worker-3[42]: careful\n");
    }

    #[test]
    fn a_line_break_in_a_message_stays_on_one_line() {
        let journal = Style { format: LogFormat::Text, journal: true };
        let mut e = event(log::Level::Error, "first\nsecond\r\nthird", &[]);
        e.ts = "";
        let line = render(journal, &e);
        assert_eq!(line, "<3>ERROR lh-worker-3[42]: first\\nsecond\\r\\nthird\n");
        assert_eq!(line.lines().count(), 1);
    }

    #[test]
    fn text_fields_follow_the_message_quoted_when_needed() {
        let fields = vec![
            ("status".to_string(), FieldValue::Number(200.into())),
            ("path".to_string(), FieldValue::Text("/healthz".into())),
            ("peer".to_string(), FieldValue::Text("a b=\"c\"\n".into())),
            ("empty".to_string(), FieldValue::Text(String::new())),
        ];
        let plain = Style { format: LogFormat::Text, journal: false };
        let line = render(plain, &event(log::Level::Info, "request", &fields));
        let want = "request status=200 path=/healthz peer=\"a b=\\\"c\\\"\\n\" empty=\"\"\n";
        assert!(line.ends_with(want), "{line}");
        assert_eq!(line.lines().count(), 1);
    }

    #[test]
    fn json_line_has_every_member_and_the_fields_and_parses() {
        let fields = vec![
            ("status".to_string(), FieldValue::Number(404.into())),
            ("path".to_string(), FieldValue::Text("/x\n\"y\"".into())),
            ("msg".to_string(), FieldValue::Text("not the message".into())),
        ];
        let json = Style { format: LogFormat::Json, journal: false };
        let line = render(json, &event(log::Level::Debug, "two\nlines", &fields));
        assert!(line.ends_with('\n') && line.lines().count() == 1, "{line}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["ts"], "2025-01-02T03:04:05.678Z");
        assert_eq!(v["level"], "debug");
        assert_eq!(v["process"], "lh-worker-3");
        assert_eq!(v["pid"], 42);
        assert_eq!(v["target"], "leasehold::process::worker");
        assert_eq!(v["msg"], "two\nlines", "a field may not replace a member");
        assert_eq!(v["status"], 404);
        assert_eq!(v["path"], "/x\n\"y\"");
    }

    #[test]
    fn json_under_journald_gets_the_priority_and_keeps_its_time() {
        let style = Style { format: LogFormat::Json, journal: true };
        let line = render(style, &event(log::Level::Error, "bad", &[]));
        let json = line.strip_prefix("<3>").unwrap_or_else(|| panic!("no priority: {line}"));
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!((v["level"].as_str(), v["ts"].as_str()), (Some("error"), Some("2025-01-02T03:04:05.678Z")));
    }
}
