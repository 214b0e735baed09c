//! The log lines of the real server, read from its stderr: journald priorities when
//! `JOURNAL_STREAM` names that stderr (and only then), JSON lines with every member, the
//! access log (off by default, turned on by a reload, secrets masked) and the WARN line of
//! a call moved to the dead-letter list.

use std::collections::BTreeSet;
use std::net::TcpListener;

use nix::sys::signal::Signal;

use crate::support::http::{once, Client};
use crate::support::{config, Server, STDERR_STREAM};

/// The priority and the rest of a journald line (`<N>rest`).
fn priority(line: &str) -> Option<(u8, &str)> {
    let rest = line.strip_prefix('<')?;
    let (n, rest) = rest.split_once('>')?;
    Some((n.parse().ok()?, rest))
}

/// Whether `text` starts with an RFC 3339 time (`2025-01-02T…`).
fn starts_with_time(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() > 11 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-' && b[10] == b'T'
}

/// Every line of `log` as JSON (panics naming a line that is not).
fn json_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}\n{log}")))
        .collect()
}

/// The access lines (target `access`) of JSON lines.
fn access(lines: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    lines.iter().filter(|l| l["target"] == "access").collect()
}

#[test]
fn under_journald_every_line_starts_with_its_priority_and_has_no_time() {
    let mut s = Server::start_with_env(&config("workers = 1", ""), &[("JOURNAL_STREAM", STDERR_STREAM)]);
    // A warning (a stray signal) and an error (a refused reload), beside the usual info and
    // debug lines.
    s.signal(Signal::SIGPWR);
    s.wait_log("SIGPWR: ignored");
    std::fs::write(&s.config_path, "[server]\nworkers = \"many\"\n").unwrap();
    s.signal(Signal::SIGHUP);
    s.wait_log("reload refused");
    s.wait_note("READY=1");
    assert_eq!(once(s.addr, "GET", "/healthz", &[], "").status, 200);
    let log = s.log();
    let mut seen = BTreeSet::new();
    for line in log.lines() {
        let (n, rest) = priority(line).unwrap_or_else(|| panic!("no priority on {line:?}\n{log}"));
        let level = rest.split(' ').next().unwrap_or_default();
        let expected = match level {
            "ERROR" => 3,
            "WARN" => 4,
            "INFO" => 6,
            "DEBUG" | "TRACE" => 7,
            _ => panic!("a time or something else before the level in {line:?}"),
        };
        assert_eq!(n, expected, "{line:?}");
        assert!(!starts_with_time(rest), "{line:?}");
        seen.insert(n);
    }
    assert_eq!(seen, BTreeSet::from([3, 4, 6, 7]), "every priority the server uses was written\n{log}");
    let line_of = |needle: &str| log.lines().find(|l| l.contains(needle)).unwrap().to_string();
    assert!(line_of("SIGPWR: ignored").starts_with("<4>WARN "), "{log}");
    assert!(line_of("reload refused").starts_with("<3>ERROR "), "{log}");
}

#[test]
fn a_journal_stream_that_is_not_stderr_changes_nothing() {
    // What a child whose stderr was sent elsewhere inherits: the journal's numbers, not its stderr's.
    // At the default level, as a service runs.
    let text = config("workers = 1", "").replace("log_level = \"debug\"", "log_level = \"info\"");
    let s = Server::start_with_env(&text, &[("JOURNAL_STREAM", "1:1")]);
    assert_eq!(once(s.addr, "GET", "/healthz", &[], "").status, 200);
    let log = s.log();
    assert!(!log.is_empty());
    for line in log.lines() {
        assert!(priority(line).is_none() && starts_with_time(line), "{line:?}\n{log}");
        let level = line.split_whitespace().nth(1).unwrap_or_default();
        assert!(["INFO", "WARN", "ERROR"].contains(&level), "below log_level = \"info\": {line:?}");
    }
}

#[test]
fn json_lines_parse_with_every_member_and_the_access_log_masks_tickets() {
    // A variable that is no setting: its warning, logged before anything else, is JSON too.
    let s = Server::start_with_env(
        &config("workers = 1\nlog_format = \"json\"\naccess_log = true", ""),
        &[("LEASEHOLD_NO_SUCH_SETTING", "1")],
    );
    let mut c = Client::connect(s.addr).unwrap();
    let acquired = c.post("/v1/locks/job/acquire", r#"{"ttl_ms":30000}"#).unwrap();
    assert_eq!(acquired.status, 200);
    let ticket = acquired.json()["ticket"].as_str().unwrap().to_string();
    assert_eq!(c.get(&format!("/v1/locks/job/tickets/{ticket}")).unwrap().status, 200);
    assert_eq!(c.get("/v1/locks?limit=5&token=hunter2").unwrap().status, 200);
    assert_eq!(c.get("/no/such/route").unwrap().status, 404);
    s.wait_log_count("\"target\":\"access\"", 4);
    let log = s.log();
    let lines = json_lines(&log);
    let mut processes = BTreeSet::new();
    for line in &lines {
        assert!(line["ts"].as_str().is_some_and(starts_with_time), "{line}");
        assert!(["error", "warn", "info", "debug", "trace"].contains(&line["level"].as_str().unwrap()), "{line}");
        assert!(line["pid"].as_u64().is_some_and(|p| p > 0), "{line}");
        assert!(line["msg"].is_string() && line["target"].is_string(), "{line}");
        processes.insert(line["process"].as_str().unwrap().to_string());
    }
    for role in ["lh-master", "lh-worker-0", "lh-keeper"] {
        assert!(processes.contains(role), "no line from {role}: {processes:?}");
    }
    assert!(
        lines.iter().any(|l| l["level"] == "warn" && l["msg"].as_str().unwrap().contains("LEASEHOLD_NO_SUCH_SETTING")),
        "{log}"
    );
    assert!(!log.contains(&ticket) && !log.contains("hunter2"), "a secret reached the log:\n{log}");
    let access = access(&lines);
    let rows: Vec<(&str, &str, u64)> = access
        .iter()
        .map(|l| (l["method"].as_str().unwrap(), l["path"].as_str().unwrap(), l["status"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        rows,
        [
            ("POST", "/v1/locks/job/acquire", 200),
            ("GET", "/v1/locks/job/tickets/***", 200),
            ("GET", "/v1/locks?limit=5&token=***", 200),
            ("GET", "/no/such/route", 404),
        ]
    );
    let first = access[0];
    assert_eq!((first["level"].as_str(), first["process"].as_str()), (Some("info"), Some("lh-worker-0")));
    assert_eq!(first["bytes"].as_u64(), Some(acquired.body.len() as u64), "{first}");
    assert!(first["duration_us"].as_u64().is_some(), "{first}");
    assert_eq!(first["peer"].as_str(), Some(c.local_addr().to_string().as_str()), "{first}");
}

#[test]
fn access_log_is_off_by_default_and_a_reload_turns_it_and_json_on() {
    let mut s = Server::start(&config("workers = 1", ""));
    assert_eq!(once(s.addr, "GET", "/healthz", &[], "").status, 200);
    assert_eq!(once(s.addr, "GET", "/v1/locks/job", &[], "").status, 404);
    let text = std::fs::read_to_string(&s.config_path).unwrap();
    let reloaded = text.replacen("[server]\n", "[server]\nlog_format = \"json\"\naccess_log = true\n", 1);
    std::fs::write(&s.config_path, reloaded).unwrap();
    let before = s.log();
    s.reload_and_wait_old_workers_gone(1);
    assert_eq!(once(s.addr, "GET", "/healthz", &[], "").status, 200);
    s.wait_log("\"target\":\"access\"");
    // Nothing before the reload was an access line, none was JSON.
    assert!(!before.contains("request method="), "access lines while off:\n{before}");
    assert!(before.lines().all(starts_with_time), "{before}");
    // After it, every process that logs writes JSON: the master, the keeper (which is not
    // replaced by a reload) and the new worker.
    let after: String = s.log()[before.len()..].lines().filter(|l| l.starts_with('{')).collect::<Vec<_>>().join("\n");
    let lines = json_lines(&after);
    let roles: BTreeSet<&str> = lines.iter().filter_map(|l| l["process"].as_str()).collect();
    for role in ["lh-master", "lh-keeper", "lh-worker-0"] {
        assert!(roles.contains(role), "no JSON line from {role} after the reload:\n{after}");
    }
    let access = access(&lines);
    assert_eq!(access.len(), 1, "{after}");
    assert_eq!((access[0]["path"].as_str(), access[0]["status"].as_u64()), (Some("/healthz"), Some(200)));
}

#[test]
fn a_call_moved_to_the_dead_letter_list_logs_one_warning_without_its_query() {
    let s = Server::start(&config("workers = 1", "[outbox]\nallow_local = true"));
    // A port nobody listens on: the one attempt is refused at once.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}/hook?token=hunter2");
    let mut c = Client::connect(s.addr).unwrap();
    let accepted = c
        .post("/v1/outbox", &serde_json::json!({ "url": url, "method": "POST", "max_attempts": 1 }).to_string())
        .unwrap();
    assert_eq!(accepted.status, 202, "{}", String::from_utf8_lossy(&accepted.body));
    let id = accepted.json()["id"].as_str().unwrap().to_string();
    s.wait_log("moved to the dead-letter list");
    let failed = c.get(&format!("/v1/outbox/{id}")).unwrap().json();
    assert_eq!(failed["state"], "failed", "{failed}");
    let log = s.log();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("dead-letter")).collect();
    assert_eq!(warnings.len(), 1, "{log}");
    let line = warnings[0];
    assert!(line.contains(" WARN ") && line.contains("lh-keeper["), "{line}");
    assert!(line.contains(&id) && line.contains(&format!("(POST http://127.0.0.1:{port}/hook)")), "{line}");
    assert!(line.contains("after 1 attempt:"), "{line}");
    assert!(!log.contains("hunter2"), "the query reached the log:\n{log}");
}
