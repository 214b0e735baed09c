//! Configuration tests: defaults, every kind of mistake, environment overrides.

use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn no_file_gives_the_documented_defaults() {
    let c = Config::defaults();
    assert_eq!(c.server.listen, vec!["127.0.0.1:8080".parse().unwrap()]);
    assert_eq!(c.server.data_dir, PathBuf::from("./data"));
    assert_eq!(c.server.dispatch, Dispatch::Reuseport);
    assert_eq!(c.journal.fsync, Fsync::Always);
    assert_eq!(c.locks.table, TableLimits::DEFAULT);
    assert_eq!(c.http.event_ping_ms, 15_000, "an idle event stream is pinged every 15 s");
    assert!(c.auth.keys.is_empty());
}

#[test]
fn three_mistakes_are_all_reported_with_their_keys() {
    let text = "
[server]
workers = 100000
dispatch = \"carrier-pigeon\"
[locks]
claim_msec = 5
";
    let problems = Config::load(Some(text), &[]).unwrap_err();
    let keys: Vec<&str> = problems.iter().map(ConfigError::key).collect();
    assert_eq!(keys, ["server.workers", "server.dispatch", "locks.claim_msec"], "{problems:?}");
}

#[test]
fn wrong_types_and_cross_key_rules_are_reported() {
    let text = "
[server]
listen = 8080
[locks]
min_ttl_ms = 5000
max_ttl_ms = 1000
[journal]
fsync = true
";
    let problems = Config::load(Some(text), &[]).unwrap_err();
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert!(text.iter().any(|p| p.starts_with("server.listen: must be")), "{text:?}");
    assert!(text.iter().any(|p| p.starts_with("locks.min_ttl_ms")), "{text:?}");
    assert!(text.iter().any(|p| p.starts_with("locks.default_ttl_ms")), "{text:?}");
    assert!(text.iter().any(|p| p.starts_with("journal.fsync: must be a string")), "{text:?}");
}

#[test]
fn syntax_error_names_its_line() {
    let problems = Config::load(Some("[server]\nworkers = = 2\n"), &[]).unwrap_err();
    assert_eq!(problems.len(), 1);
    assert!(matches!(problems[0], ConfigError::Syntax { line: 2, .. }), "{problems:?}");
}

#[test]
fn unknown_section_is_reported() {
    let problems = Config::load(Some("[sever]\nworkers = 2\n"), &[]).unwrap_err();
    assert_eq!(problems[0].key(), "[sever]");
}

#[test]
fn environment_overrides_the_file() {
    let text = "[server]\nworkers = 3\nlisten = [\"127.0.0.1:9000\"]\n";
    let c = Config::load(
        Some(text),
        &env(&[
            ("LEASEHOLD_WORKERS", "5"),
            ("LEASEHOLD_LISTEN", "127.0.0.1:1, [::1]:2"),
            ("LEASEHOLD_FSYNC", "never"),
            ("LEASEHOLD_INSECURE_ANONYMOUS", "1"),
        ]),
    )
    .unwrap();
    assert_eq!(c.server.workers, 5);
    assert_eq!(c.server.listen.len(), 2);
    assert_eq!(c.journal.fsync, Fsync::Never);
    assert!(c.auth.insecure_anonymous);
}

#[test]
fn max_unsent_bytes_defaults_to_1_mib_and_is_checked() {
    assert_eq!(Config::defaults().http.max_unsent_bytes, DEFAULT_MAX_UNSENT_BYTES);
    let c = Config::load(Some("[http]\nmax_unsent_bytes = 65536\n"), &[]).unwrap();
    assert_eq!(c.http.max_unsent_bytes, 65_536);
    let c = Config::load(None, &env(&[("LEASEHOLD_MAX_UNSENT_BYTES", "2_097_152")])).unwrap();
    assert_eq!(c.http.max_unsent_bytes, 2 << 20);
    for bad in ["0", "1024", "2147483648"] {
        let problems = Config::load(Some(&format!("[http]\nmax_unsent_bytes = {bad}\n")), &[]).unwrap_err();
        assert_eq!(problems[0].key(), "http.max_unsent_bytes", "{bad}: {problems:?}");
    }
}

#[test]
fn bad_environment_value_names_the_variable() {
    let problems = Config::load(None, &env(&[("LEASEHOLD_WORKERS", "many")])).unwrap_err();
    assert_eq!(problems[0].key(), "server.workers (from LEASEHOLD_WORKERS)");
}

#[test]
fn unknown_leasehold_variable_is_a_warning_not_an_error() {
    let c = Config::load(None, &env(&[("LEASEHOLD_WORKRES", "2"), ("LEASEHOLD_URL", "x")])).unwrap();
    assert_eq!(c.warnings.len(), 1);
    assert!(c.warnings[0].contains("LEASEHOLD_WORKRES"));
}

#[test]
fn compat_key_variables_add_keys_with_their_roles() {
    let c = Config::load(
        None,
        &env(&[("RESOURCE_READ", "read"), ("RESOURCE_READ_LOCK", "read_lock"), ("RESOURCE_WRITE", "write")]),
    )
    .unwrap();
    let roles: Vec<(String, Role)> = c.auth.keys.iter().map(|k| (k.key.clone(), k.role)).collect();
    assert_eq!(roles, [("read".into(), Role::Read), ("read_lock".into(), Role::Lock), ("write".into(), Role::Write)]);
}

#[test]
fn same_compat_key_for_two_roles_gets_the_higher() {
    let c = Config::load(None, &env(&[("RESOURCE_READ", "shared"), ("RESOURCE_WRITE", "shared")])).unwrap();
    assert_eq!(c.auth.keys.len(), 1);
    assert_eq!(c.auth.keys[0].role, Role::Write);
}

#[test]
fn file_keys_with_roles_and_prefixes_are_read_and_checked() {
    let text = "
[[auth.keys]]
key = \"s3cret-key\"
role = \"lock\"
prefix = \"jobs/\"
[[auth.keys]]
key = \"s3cret-key\"
role = \"read\"
[[auth.keys]]
key = \"other-key\"
role = \"admin\"
";
    let problems = Config::load(Some(text), &[]).unwrap_err();
    let keys: Vec<&str> = problems.iter().map(ConfigError::key).collect();
    assert_eq!(keys, ["auth.keys[1]", "auth.keys[2].role"], "{problems:?}");
}

#[test]
fn non_loopback_listen_without_keys_is_refused_unless_insecure_anonymous() {
    let text = "[server]\nlisten = [\"0.0.0.0:8080\"]\n";
    let problems = Config::load(Some(text), &[]).unwrap_err();
    assert_eq!(problems[0].key(), "auth.keys");
    let ok = format!("{text}[auth]\ninsecure_anonymous = true\n");
    assert!(Config::load(Some(&ok), &[]).is_ok());
    let with_key = format!("{text}[[auth.keys]]\nkey = \"abcdefgh\"\nrole = \"write\"\n");
    assert!(Config::load(Some(&with_key), &[]).is_ok());
}

#[test]
fn api_key_debug_never_shows_the_secret() {
    let c = Config::load(None, &env(&[("RESOURCE_WRITE", "top-secret-value")])).unwrap();
    assert!(!format!("{c:?}").contains("top-secret-value"));
}

#[test]
fn every_key_has_a_unique_environment_variable() {
    let keys = Config::known_keys();
    let mut vars: Vec<&str> = keys.iter().map(|k| k.env).filter(|e| !e.is_empty()).collect();
    let n = vars.len();
    vars.sort_unstable();
    vars.dedup();
    assert_eq!(vars.len(), n);
    assert!(vars.iter().all(|v| v.starts_with("LEASEHOLD_")));
}

#[test]
fn totals_are_read_range_checked_and_kept_above_the_per_lock_limit() {
    let text = "
[locks]
max_data_bytes = 1000
max_data_bytes_total = 5000
max_tickets_total = 7
max_resources = 0
max_event_streams = 3
";
    let c = Config::load(Some(text), &env(&[("LEASEHOLD_MAX_EVENT_STREAMS", "4")])).unwrap();
    let t = &c.locks.table;
    assert_eq!((t.max_data_bytes_total, t.max_tickets_total, t.max_resources, t.max_event_streams), (5000, 7, 0, 4));
    let over = "
[locks]
max_data_bytes = 2000
max_data_bytes_total = 1000
max_tickets_total = 0
max_event_streams = -1
";
    let problems = Config::load(Some(over), &env(&[("LEASEHOLD_MAX_RESOURCES", "100000001")])).unwrap_err();
    let keys: Vec<&str> = problems.iter().map(ConfigError::key).collect();
    for key in [
        "locks.max_tickets_total",
        "locks.max_resources (from LEASEHOLD_MAX_RESOURCES)",
        "locks.max_event_streams",
        "locks.max_data_bytes",
    ] {
        assert!(keys.contains(&key), "{key} not reported in {problems:?}");
    }
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert!(text.iter().any(|p| p.contains("must not exceed locks.max_data_bytes_total (1000)")), "{text:?}");
}
