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
prefix = \"jobs-\"
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
fn key_file_is_recorded_resolved_against_the_credentials_directory_and_checked() {
    let text = "
[server]
listen = [\"0.0.0.0:8080\"]
[[auth.keys]]
key_file = \"leasehold-key\"
role = \"lock\"
prefix = \"jobs-\"
[[auth.keys]]
key_file = \"/etc/leasehold/admin-key\"
role = \"write\"
";
    // A key file counts as a key for the non-loopback rule before it is read.
    let c = Config::load(Some(text), &env(&[("CREDENTIALS_DIRECTORY", "/run/credentials/leasehold.service")])).unwrap();
    assert!(c.auth.keys.is_empty(), "files are read by the processes, not here");
    let files: Vec<(&str, &str, Role, &str)> = c
        .auth
        .key_files
        .iter()
        .map(|f| (f.path.to_str().unwrap(), f.setting.as_str(), f.role, f.prefix.as_str()))
        .collect();
    assert_eq!(
        files,
        [
            ("/run/credentials/leasehold.service/leasehold-key", "auth.keys[0].key_file", Role::Lock, "jobs-"),
            ("/etc/leasehold/admin-key", "auth.keys[1].key_file", Role::Write, ""),
        ]
    );
    // Without the directory a relative path is the working directory's.
    let c = Config::load(Some(text), &[]).unwrap();
    assert_eq!(c.auth.key_files[0].path, PathBuf::from("leasehold-key"));
    let bad = "
[[auth.keys]]
key = \"inline-key\"
key_file = \"also\"
role = \"read\"
[[auth.keys]]
key_file = \"\"
role = \"read\"
[[auth.keys]]
key_file = 7
role = \"read\"
[[auth.keys]]
role = \"read\"
";
    let problems = Config::load(Some(bad), &[]).unwrap_err();
    let keys: Vec<&str> = problems.iter().map(ConfigError::key).collect();
    assert_eq!(
        keys,
        ["auth.keys[0].key_file", "auth.keys[1].key_file", "auth.keys[2].key_file", "auth.keys[3].key"],
        "{problems:?}"
    );
}

#[test]
fn the_upgrade_layout_variable_is_no_unknown_setting() {
    let c = Config::load(None, &env(&[("LEASEHOLD_UPGRADE", "reuseport,1,1"), ("LEASEHOLD_TYPO", "1")])).unwrap();
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(c.warnings[0].contains("LEASEHOLD_TYPO"));
}

#[test]
fn log_format_and_access_log_are_read_checked_and_overridden() {
    let c = Config::defaults();
    assert_eq!((c.server.log_format, c.server.access_log), (LogFormat::Text, false));
    let c = Config::load(Some("[server]\nlog_format = \"json\"\naccess_log = true\n"), &[]).unwrap();
    assert_eq!((c.server.log_format, c.server.access_log), (LogFormat::Json, true));
    let c = Config::load(
        Some("[server]\nlog_format = \"json\"\n"),
        &env(&[("LEASEHOLD_LOG_FORMAT", "text"), ("LEASEHOLD_ACCESS_LOG", "1")]),
    )
    .unwrap();
    assert_eq!((c.server.log_format, c.server.access_log), (LogFormat::Text, true));
    let problems = Config::load(Some("[server]\nlog_format = \"xml\"\naccess_log = \"yes\"\n"), &[]).unwrap_err();
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        text,
        ["server.log_format: is \"xml\"; it must be one of text, json", "server.access_log: must be true or false"]
    );
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

/// A valid `[cluster]` section, with `extra` lines appended to it.
fn cluster_text(extra: &str) -> String {
    format!(
        "[cluster]\netcd_endpoints = [\"http://10.0.0.1:2379\", \"http://etcd-2.example:2379\"]\n\
         node_name = \"node-a\"\nadvertise_url = \"http://10.0.0.11:8080\"\n{extra}"
    )
}

/// The keys of the problems of a configuration that must be refused.
fn problem_keys(text: &str, vars: &[(&str, &str)]) -> Vec<String> {
    match Config::load(Some(text), &env(vars)) {
        Ok(c) => panic!("accepted {text:?} with {vars:?}: {:?}", c.cluster),
        Err(problems) => problems.iter().map(|p| p.key().to_string()).collect(),
    }
}

#[test]
fn cluster_defaults_to_single_node() {
    assert_eq!(Config::defaults().cluster, None);
    // An empty [cluster] section is no cluster either.
    assert_eq!(Config::load(Some("[cluster]\n"), &[]).unwrap().cluster, None);
}

#[test]
fn cluster_full_section_parses_to_the_expected_values() {
    let text = "
[cluster]
etcd_endpoints = [\"http://10.0.0.1:2379\", \"http://ETCD-2.example:2379/\", \"http://[::1]:2379\"]
prefix = \"/shop/locks\"
node_name = \"node_A.1\"
advertise_url = \"https://node-a.example:8443\"
election_ttl_ms = 5000
etcd_timeout_ms = 4999
snapshot_every_batches = 500
";
    let c = Config::load(Some(text), &[]).unwrap().cluster.expect("cluster mode is on");
    assert_eq!(
        c,
        ClusterConfig {
            etcd_endpoints: vec![
                "http://10.0.0.1:2379".into(),
                "http://etcd-2.example:2379".into(),
                "http://[::1]:2379".into()
            ],
            prefix: "/shop/locks".into(),
            node_name: "node_A.1".into(),
            advertise_url: "https://node-a.example:8443".into(),
            election_ttl_ms: 5_000,
            etcd_timeout_ms: 4_999,
            peer: None,
            snapshot_every_batches: 500,
        }
    );
}

#[test]
fn cluster_minimal_section_takes_the_documented_defaults() {
    let c = Config::load(Some(&cluster_text("")), &[]).unwrap().cluster.unwrap();
    assert_eq!((c.prefix.as_str(), c.election_ttl_ms, c.etcd_timeout_ms), ("/leasehold", 3_000, 1_000));
}

#[test]
fn cluster_environment_overrides_the_file() {
    let vars = [
        ("LEASEHOLD_ETCD_ENDPOINTS", "http://a:2379, http://b:2379,http://c:2379"),
        ("LEASEHOLD_CLUSTER_PREFIX", "/other"),
        ("LEASEHOLD_NODE_NAME", "node-b"),
        ("LEASEHOLD_ADVERTISE_URL", "http://b:8080"),
        ("LEASEHOLD_ELECTION_TTL_MS", "10000"),
        ("LEASEHOLD_ETCD_TIMEOUT_MS", "2000"),
    ];
    let c = Config::load(Some(&cluster_text("prefix = \"/mine\"\n")), &env(&vars)).unwrap();
    assert!(c.warnings.is_empty(), "every variable is a setting: {:?}", c.warnings);
    let c = c.cluster.unwrap();
    assert_eq!(c.etcd_endpoints, ["http://a:2379", "http://b:2379", "http://c:2379"]);
    assert_eq!(
        (c.prefix.as_str(), c.node_name.as_str(), c.advertise_url.as_str()),
        ("/other", "node-b", "http://b:8080")
    );
    assert_eq!((c.election_ttl_ms, c.etcd_timeout_ms), (10_000, 2_000));
    // The variables alone turn cluster mode on.
    let only_env = Config::load(None, &env(&vars)).unwrap();
    assert_eq!(only_env.cluster.unwrap().node_name, "node-b");
}

#[test]
fn cluster_bad_endpoints_are_each_named() {
    let bad = [
        "[\"ftp://10.0.0.1:2379\"]",
        "[\"10.0.0.1:2379\"]",
        "[\"http://10.0.0.1:2379/v3\"]",
        "[\"http://10.0.0.1:2379/?x=1\"]",
        "[\"http://user:pw@10.0.0.1:2379\"]",
        "[\"http://10.0.0.1\"]",
        "[\"http://10.0.0.1:80\", \"http://10.0.0.1\"]",
        "[\"https://10.0.0.1\"]",
        "[\"https://10.0.0.1:2379\"]",
        "[\"http://10.0.0.1:\"]",
        "[\"http://[::1]\"]",
        "[\"http://10.0.0.1:2379\", \"http://10.0.0.1:2379/\"]",
        "[\"http://a:2379\", \"http://A:2379\"]",
        "[]",
        "[\"http://a b:2379\"]",
        "[\"not a url\"]",
        "42",
    ];
    for value in bad {
        let text =
            format!("[cluster]\netcd_endpoints = {value}\nnode_name = \"n\"\nadvertise_url = \"http://n:8080\"\n");
        assert_eq!(problem_keys(&text, &[]), ["cluster.etcd_endpoints"], "{value}");
    }
}

#[test]
fn cluster_at_most_16_endpoints() {
    let list = |n: usize| (0..n).map(|i| format!("http://10.0.0.{i}:2379")).collect::<Vec<_>>().join(",");
    let ok = Config::load(Some(&cluster_text("")), &env(&[("LEASEHOLD_ETCD_ENDPOINTS", &list(16))])).unwrap();
    assert_eq!(ok.cluster.unwrap().etcd_endpoints.len(), 16);
    let problems = Config::load(Some(&cluster_text("")), &env(&[("LEASEHOLD_ETCD_ENDPOINTS", &list(17))])).unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].key(), "cluster.etcd_endpoints (from LEASEHOLD_ETCD_ENDPOINTS)");
    assert!(problems[0].to_string().contains("17"), "{}", problems[0]);
}

#[test]
fn cluster_empty_endpoint_variable_is_refused() {
    let keys = problem_keys(&cluster_text(""), &[("LEASEHOLD_ETCD_ENDPOINTS", " , ")]);
    assert_eq!(keys, ["cluster.etcd_endpoints (from LEASEHOLD_ETCD_ENDPOINTS)"]);
}

#[test]
fn cluster_bad_prefixes_are_refused() {
    let long = format!("/{}", "p".repeat(128));
    for bad in ["leasehold", "/leasehold/", "/", "", "/lease hold", "/lé", "/tab\tbed", long.as_str()] {
        let keys = problem_keys(&cluster_text(&format!("prefix = {bad:?}\n")), &[]);
        assert_eq!(keys, ["cluster.prefix"], "{bad:?}");
    }
    let longest = format!("/{}", "p".repeat(127));
    for good in ["/a", "/shop/locks-2", "/x_y.z", longest.as_str()] {
        let c = Config::load(Some(&cluster_text(&format!("prefix = {good:?}\n"))), &[]).unwrap();
        assert_eq!(c.cluster.unwrap().prefix, good);
    }
}

#[test]
fn cluster_bad_node_names_are_refused() {
    let long = "n".repeat(64);
    for bad in ["", "node a", "node/a", "nöde", "node:a", long.as_str()] {
        let keys = problem_keys(&cluster_text("").replace("\"node-a\"", &format!("{bad:?}")), &[]);
        assert_eq!(keys, ["cluster.node_name"], "{bad:?}");
    }
    let longest = "n".repeat(63);
    let c = Config::load(Some(&cluster_text("").replace("node-a", &longest)), &[]).unwrap();
    assert_eq!(c.cluster.unwrap().node_name, longest);
}

#[test]
fn cluster_bad_advertise_urls_are_refused() {
    for bad in [
        "10.0.0.11:8080",
        "unix:///run/leasehold.sock",
        "http://10.0.0.11",
        "http://10.0.0.11:8080/api",
        "http://10.0.0.11:8080?x",
        "http://u@10.0.0.11:8080",
        "http://0.0.0.0:8080",
        "http://[::]:8080",
        "",
    ] {
        let keys = problem_keys(&cluster_text("").replace("http://10.0.0.11:8080", bad), &[]);
        assert_eq!(keys, ["cluster.advertise_url"], "{bad:?}");
    }
}

#[test]
fn cluster_election_ttl_is_whole_seconds_in_range() {
    for bad in [3_500, 2_000, 61_000, 0] {
        let keys = problem_keys(&cluster_text(&format!("election_ttl_ms = {bad}\n")), &[]);
        assert!(keys.contains(&"cluster.election_ttl_ms".to_string()), "{bad}: {keys:?}");
    }
    let problems = Config::load(Some(&cluster_text("election_ttl_ms = 3500\n")), &[]).unwrap_err();
    let text = problems[0].to_string();
    assert!(text.contains("multiple of 1000") && text.contains("whole seconds"), "{text}");
    for good in [3_000, 60_000] {
        let c = Config::load(Some(&cluster_text(&format!("election_ttl_ms = {good}\n"))), &[]).unwrap();
        assert_eq!(c.cluster.unwrap().election_ttl_ms, good);
    }
}

#[test]
fn cluster_etcd_timeout_must_be_in_range_and_below_the_ttl() {
    for bad in [99, 60_001] {
        let keys = problem_keys(&cluster_text(&format!("etcd_timeout_ms = {bad}\n")), &[]);
        assert!(keys.contains(&"cluster.etcd_timeout_ms".to_string()), "{bad}: {keys:?}");
    }
    let problems = Config::load(Some(&cluster_text("etcd_timeout_ms = 3000\n")), &[]).unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].key(), "cluster.etcd_timeout_ms");
    assert!(problems[0].to_string().contains("cluster.election_ttl_ms (3000)"), "{}", problems[0]);
    let c = Config::load(Some(&cluster_text("etcd_timeout_ms = 2999\n")), &[]).unwrap();
    assert_eq!(c.cluster.unwrap().etcd_timeout_ms, 2_999);
}

#[test]
fn cluster_on_requires_node_name_and_advertise_url() {
    let keys = problem_keys("[cluster]\netcd_endpoints = [\"http://10.0.0.1:2379\"]\n", &[]);
    assert_eq!(keys, ["cluster.node_name", "cluster.advertise_url"]);
}

#[test]
fn cluster_keys_without_endpoints_are_refused_not_ignored() {
    let problems = Config::load(Some("[cluster]\nnode_name = \"node-a\"\nelection_ttl_ms = 5000\n"), &[]).unwrap_err();
    let keys: Vec<&str> = problems.iter().map(ConfigError::key).collect();
    assert_eq!(keys, ["cluster.node_name", "cluster.election_ttl_ms"], "{problems:?}");
    assert!(problems[0].to_string().contains("cluster.etcd_endpoints is not"), "{}", problems[0]);
    let keys = problem_keys("", &[("LEASEHOLD_ADVERTISE_URL", "http://a:8080"), ("LEASEHOLD_CLUSTER_PREFIX", "/x")]);
    assert_eq!(
        keys,
        ["cluster.prefix (from LEASEHOLD_CLUSTER_PREFIX)", "cluster.advertise_url (from LEASEHOLD_ADVERTISE_URL)"]
    );
}

#[test]
fn cluster_unknown_key_is_reported() {
    let keys = problem_keys(&cluster_text("secret_token = \"x\"\n"), &[]);
    assert_eq!(keys, ["cluster.secret_token"]);
}

#[test]
fn cluster_all_mistakes_are_reported_together() {
    let text = "
[cluster]
etcd_endpoints = [\"ftp://a:1\"]
prefix = \"x\"
node_name = \"a b\"
advertise_url = \"http://a\"
election_ttl_ms = 2500
";
    let keys = problem_keys(text, &[]);
    assert_eq!(
        keys,
        [
            "cluster.etcd_endpoints",
            "cluster.prefix",
            "cluster.node_name",
            "cluster.advertise_url",
            "cluster.election_ttl_ms"
        ]
    );
}

#[test]
fn cluster_peer_link_needs_a_listen_address_and_a_secret_and_an_address_others_can_reach() {
    let base = "[cluster]\netcd_endpoints = [\"http://10.0.0.1:2379\"]\nnode_name = \"a\"\nadvertise_url = \"http://10.0.0.11:8080\"\n";
    let load = |extra: &str| Config::load(Some(&format!("{base}{extra}")), &[]);
    let peer = load("peer_listen = \"10.0.0.11:7070\"\nsecret = \"0123456789abcdef\"").unwrap().cluster.unwrap().peer;
    assert_eq!(
        peer,
        Some(PeerConfig {
            listen: "10.0.0.11:7070".parse().unwrap(),
            advertise: "10.0.0.11:7070".into(),
            secret: "0123456789abcdef".into(),
            tls: None,
        })
    );
    let problems = |extra: &str| -> String {
        load(extra).unwrap_err().iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
    };
    assert!(problems("peer_listen = \"10.0.0.11:7070\"").contains("cluster.secret: is required"));
    assert!(problems("peer_listen = \"10.0.0.11:7070\"\nsecret = \"short\"").contains("16 to 1024 bytes"));
    assert!(problems("peer_listen = \"0.0.0.0:7070\"\nsecret = \"0123456789abcdef\"")
        .contains("cluster.peer_advertise: is required"));
    assert!(problems("secret = \"0123456789abcdef\"").contains("needs peer_listen"));
    assert!(problems("peer_listen = \"nowhere\"\nsecret = \"0123456789abcdef\"").contains("is not an address"));
    let advertised = load(
        "peer_listen = \"0.0.0.0:7070\"\npeer_advertise = \"node-a.internal:7070\"\nsecret = \"0123456789abcdef\"",
    );
    assert_eq!(advertised.unwrap().cluster.unwrap().peer.unwrap().advertise, "node-a.internal:7070");
    assert!(problems(
        "peer_listen = \"0.0.0.0:7070\"\npeer_advertise = \"0.0.0.0:7070\"\nsecret = \"0123456789abcdef\""
    )
    .contains("unspecified"));
}

#[test]
fn cluster_peer_tls_takes_all_three_files_or_none_and_only_with_the_peer_link() {
    let base = "[cluster]\netcd_endpoints = [\"http://10.0.0.1:2379\"]\nnode_name = \"a\"\nadvertise_url = \"http://10.0.0.11:8080\"\n";
    let link = "peer_listen = \"10.0.0.11:7070\"\nsecret = \"0123456789abcdef\"\n";
    let files = "peer_tls_cert = \"/etc/leasehold/node.pem\"\npeer_tls_key = \"node.key\"\npeer_tls_ca = \"/etc/leasehold/ca.pem\"\n";
    let load = |extra: &str, vars: &[(&str, &str)]| Config::load(Some(&format!("{base}{extra}")), &env(vars));
    let tls = load(&format!("{link}{files}"), &[]).unwrap().cluster.unwrap().peer.unwrap().tls.unwrap();
    assert_eq!(
        tls,
        PeerTlsFiles {
            cert: TlsFile { path: "/etc/leasehold/node.pem".into(), setting: "cluster.peer_tls_cert".into() },
            key: TlsFile { path: "node.key".into(), setting: "cluster.peer_tls_key".into() },
            ca: TlsFile { path: "/etc/leasehold/ca.pem".into(), setting: "cluster.peer_tls_ca".into() },
        }
    );
    assert_eq!(load(link, &[]).unwrap().cluster.unwrap().peer.unwrap().tls, None, "plain TCP without them");

    // The variables override the file, and name themselves in problems.
    let vars = [("LEASEHOLD_PEER_TLS_CERT", "/run/node.pem"), ("LEASEHOLD_PEER_TLS_KEY", "/run/node.key")];
    let c = load(&format!("{link}{files}"), &vars).unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let tls = c.cluster.unwrap().peer.unwrap().tls.unwrap();
    assert_eq!((tls.cert.path.to_str(), tls.key.path.to_str()), (Some("/run/node.pem"), Some("/run/node.key")));
    assert_eq!(tls.cert.setting, "cluster.peer_tls_cert (from LEASEHOLD_PEER_TLS_CERT)");
    let tls = load(
        link,
        &[("LEASEHOLD_PEER_TLS_CERT", "c"), ("LEASEHOLD_PEER_TLS_KEY", "k"), ("LEASEHOLD_PEER_TLS_CA", "a")],
    );
    assert_eq!(tls.unwrap().cluster.unwrap().peer.unwrap().tls.unwrap().ca.path.to_str(), Some("a"));

    // All three or none: each missing one is named.
    let problems = load(&format!("{link}peer_tls_cert = \"node.pem\"\n"), &[]).unwrap_err();
    let keys: Vec<&str> = problems.iter().map(ConfigError::key).collect();
    assert_eq!(keys, ["cluster.peer_tls_key", "cluster.peer_tls_ca"], "{problems:?}");
    assert!(problems[0].to_string().contains("all three, or none"), "{}", problems[0]);
    // Only with the peer link.
    let keys = problem_keys(&format!("{base}{files}"), &[]);
    assert_eq!(keys, ["cluster.peer_tls_cert", "cluster.peer_tls_key", "cluster.peer_tls_ca"]);
    let problems = load(files, &[]).unwrap_err();
    assert!(problems[0].to_string().contains("needs peer_listen"), "{}", problems[0]);
    // Not in single-node mode either.
    let problems = Config::load(None, &env(&[("LEASEHOLD_PEER_TLS_CA", "ca.pem")])).unwrap_err();
    assert!(problems.iter().all(|p| p.key() == "cluster.peer_tls_ca (from LEASEHOLD_PEER_TLS_CA)"), "{problems:?}");
    assert!(problems.iter().any(|p| p.to_string().contains("cluster.etcd_endpoints is not")), "{problems:?}");
    // An empty path, a path of the wrong type (reported once, as such).
    let keys =
        problem_keys(&format!("{base}{link}peer_tls_cert = \" \"\npeer_tls_key = 7\npeer_tls_ca = \"ca.pem\"\n"), &[]);
    assert_eq!(
        keys,
        ["cluster.peer_tls_key", "cluster.peer_tls_cert"],
        "the wrong type as it is read, then the empty path"
    );
}

/// The file text that sets `key` (a known `section.key`) to `value`, in an otherwise valid
/// configuration (a `[cluster]` key needs the rest of a cluster section).
fn setting(key: &str, value: &str) -> String {
    let (section, name) = key.split_once('.').unwrap();
    if section == "cluster" {
        cluster_text(&format!("{name} = {value}\n"))
    } else {
        format!("[{section}]\n{name} = {value}\n")
    }
}

#[test]
fn every_ms_key_takes_a_duration_string_as_its_milliseconds() {
    let keys: Vec<KeyDoc> = Config::known_keys().into_iter().filter(|k| k.path.ends_with("_ms")).collect();
    assert!(keys.len() >= 20, "expected every _ms key, found {keys:?}");
    for key in &keys {
        for (duration, ms) in [("5s", "5000"), ("1m30s", "90000"), ("250ms", "250"), ("3000", "3000")] {
            let as_text = Config::load(Some(&setting(&key.path, &format!("{duration:?}"))), &[]);
            let as_integer = Config::load(Some(&setting(&key.path, ms)), &[]);
            assert_eq!(as_text, as_integer, "{} = {duration:?}", key.path);
            let from_env = Config::load(None, &env(&[(key.env, duration)]));
            let from_env_ms = Config::load(None, &env(&[(key.env, ms)]));
            assert_eq!(from_env, from_env_ms, "{}={duration}", key.env);
        }
    }
}

#[test]
fn drain_timeout_of_5s_is_5000_ms_from_the_file_or_the_variable() {
    let c = Config::load(Some("[server]\ndrain_timeout_ms = \"5s\"\n"), &[]).unwrap();
    assert_eq!(c.server.drain_timeout_ms, 5_000);
    let c = Config::load(None, &env(&[("LEASEHOLD_DRAIN_TIMEOUT_MS", "5s")])).unwrap();
    assert_eq!(c.server.drain_timeout_ms, 5_000);
    let c = Config::load(Some("[server]\ndrain_timeout_ms = 5000\n"), &[]).unwrap();
    assert_eq!(c.server.drain_timeout_ms, 5_000, "integers stay milliseconds");
}

#[test]
fn a_bad_duration_names_its_key_and_says_what_to_write() {
    for (value, says) in [
        ("\"5 sec\"", "server.drain_timeout_ms: \"5 sec\" is not a duration: unknown unit \" sec\""),
        ("\"10d\"", "server.drain_timeout_ms: \"10d\" is not a duration: unknown unit \"d\""),
        ("\"-1s\"", "server.drain_timeout_ms: \"-1s\" is not a duration"),
        ("\"\"", "server.drain_timeout_ms: \"\" is not a duration: no duration given"),
        ("true", "server.drain_timeout_ms: must be a whole number of milliseconds or a duration string"),
        ("\"20m\"", "server.drain_timeout_ms: 1200000 is out of range"),
    ] {
        let problems = Config::load(Some(&format!("[server]\ndrain_timeout_ms = {value}\n")), &[]).unwrap_err();
        assert_eq!(problems.len(), 1, "{value}: {problems:?}");
        let text = problems[0].to_string();
        assert!(text.starts_with(says), "{value}: {text}");
    }
    let problems = Config::load(None, &env(&[("LEASEHOLD_DRAIN_TIMEOUT_MS", "soon")])).unwrap_err();
    assert_eq!(problems[0].key(), "server.drain_timeout_ms (from LEASEHOLD_DRAIN_TIMEOUT_MS)");
    assert!(problems[0].to_string().contains("such as 500ms, 30s"), "{}", problems[0]);
    // Only `_ms` keys take durations: a count is still a whole number.
    let problems = Config::load(Some("[server]\nworkers = \"5s\"\n"), &[]).unwrap_err();
    assert_eq!(problems[0].to_string(), "server.workers: must be a whole number");
}

#[test]
fn declared_locks_are_read_by_name_and_prefix_with_every_field() {
    let text = r#"
[[locks.declare]]
name = "checkout"
limit = 3
queue = "lottery"
min_ttl_ms = "1s"
max_ttl_ms = 60000
default_ttl_ms = "10s"
admit_per_minute = 60
admit_burst = 5
waiter_ttl_ms = "1m"
claim_ms = 2000

[[locks.declare]]
prefix = "config-"
kind = "rw"
"#;
    let c = Config::load(Some(text), &[]).unwrap();
    let name = LockName::parse("checkout").unwrap();
    assert_eq!(
        c.locks.table.declared,
        [
            Declaration {
                limit: 3,
                queue: QueueKind::Lottery,
                min_ttl_ms: Some(1_000),
                max_ttl_ms: Some(60_000),
                default_ttl_ms: Some(10_000),
                admit_per_minute: Some(60),
                admit_burst: 5,
                waiter_ttl_ms: Some(60_000),
                claim_ms: Some(2_000),
                ..Declaration::new(Some(name), None)
            },
            Declaration { kind: LockKind::Rw, ..Declaration::new(None, Some("config-".into())) },
        ]
    );
    // Without any, nothing is declared.
    assert!(Config::defaults().locks.table.declared.is_empty());
}

#[test]
fn each_bad_declaration_is_reported_naming_its_entry_and_key() {
    let text = r#"
[locks]
max_limit = 100
min_ttl_ms = 1000

[[locks.declare]]
name = "a"
limt = 3

[[locks.declare]]
name = "b"
limit = 101

[[locks.declare]]
name = "c"
kind = "rw"
limit = 2

[[locks.declare]]
name = "d"
min_ttl_ms = 500

[[locks.declare]]
name = "e"
prefix = "e"

[[locks.declare]]
limit = 2

[[locks.declare]]
name = "a"

[[locks.declare]]
prefix = "jobs-"

[[locks.declare]]
prefix = "queue-"
queue = "lifo"

[[locks.declare]]
prefix = "rate-"
admit_per_minute = 0

[[locks.declare]]
name = "not a name!"
waiter_ttl_ms = "soon"

[[locks.declare]]
name = "f"
limit = "3"
kind = 1

[[locks.declare]]
prefix = "jobs-"
"#;
    let problems = Config::load(Some(text), &[]).unwrap_err();
    let keys: Vec<&str> = problems.iter().map(ConfigError::key).collect();
    assert_eq!(
        keys,
        [
            "locks.declare[0].limt",
            "locks.declare[1].limit",
            "locks.declare[2].kind",
            "locks.declare[3].min_ttl_ms",
            "locks.declare[4]",
            "locks.declare[5]",
            // The same name again (the first "a" had a problem of its own, but names it).
            "locks.declare[6].name",
            "locks.declare[8].queue",
            "locks.declare[9].admit_per_minute",
            "locks.declare[10].name",
            "locks.declare[10].waiter_ttl_ms",
            "locks.declare[11].kind",
            "locks.declare[11].limit",
            "locks.declare[12].prefix",
        ],
        "{problems:#?}"
    );
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert!(text[0].contains("unknown key (a declaration has name, prefix, kind"), "{}", text[0]);
    assert!(text[1].contains("101 is out of range; it must be between 1 and 100"), "{}", text[1]);
    assert!(text[2].contains("a read/write lock"), "{}", text[2]);
    assert!(text[3].contains("within locks.min_ttl_ms (1000)"), "{}", text[3]);
    assert!(text[4].contains("exactly one of name and prefix"), "{}", text[4]);
    assert!(text[13].contains(r#"declares prefix "jobs-" again (locks.declare[7] did)"#), "{}", text[13]);
}

#[test]
fn declarations_are_an_array_of_tables_from_the_file_only_and_bounded_in_number() {
    let problems = Config::load(Some("[locks]\ndeclare = \"x\"\n"), &[]).unwrap_err();
    assert_eq!(problems[0].to_string(), "locks.declare: must be an array of tables ([[section.key]])");
    // No variable sets them: one that looks like it is only an unknown variable.
    let c = Config::load(None, &env(&[("LEASEHOLD_LOCKS_DECLARE", "name=a")])).unwrap();
    assert!(c.locks.table.declared.is_empty());
    assert!(c.warnings.iter().any(|w| w.contains("LEASEHOLD_LOCKS_DECLARE")), "{:?}", c.warnings);
    let many: String = (0..=MAX_DECLARATIONS).map(|i| format!("[[locks.declare]]\nname = \"l{i}\"\n")).collect();
    let problems = Config::load(Some(&many), &[]).unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].key(), "locks.declare");
    assert!(problems[0].to_string().contains("at most 10000"), "{}", problems[0]);
    let most: String = (0..MAX_DECLARATIONS).map(|i| format!("[[locks.declare]]\nname = \"l{i}\"\n")).collect();
    assert_eq!(Config::load(Some(&most), &[]).unwrap().locks.table.declared.len(), MAX_DECLARATIONS);
}

#[test]
fn tls_is_off_by_default_and_listens_beside_server_listen() {
    let c = Config::defaults();
    assert!(c.tls.listen.is_empty() && c.tls.files.is_none());
    assert_eq!(c.listen_addresses(), c.server.listen);
    let text = "
[tls]
listen = [\"127.0.0.1:8443\"]
cert_file = \"/etc/leasehold/cert.pem\"
key_file = \"/etc/leasehold/key.pem\"
";
    let c = Config::load(Some(text), &[]).unwrap();
    let addresses: Vec<SocketAddr> = vec!["127.0.0.1:8080".parse().unwrap(), "127.0.0.1:8443".parse().unwrap()];
    assert_eq!(c.listen_addresses(), addresses);
    assert!(!c.is_tls_listener(0) && c.is_tls_listener(1));
    let files = c.tls.files.unwrap();
    assert_eq!(files.cert.path, PathBuf::from("/etc/leasehold/cert.pem"));
    assert_eq!(files.cert.setting, "tls.cert_file");
    assert!(files.client_ca.is_none());
}

#[test]
fn tls_mistakes_are_reported_by_key() {
    let problems = |text: &str, vars: &[(&str, &str)]| -> Vec<String> {
        Config::load(Some(text), &env(vars)).unwrap_err().iter().map(ToString::to_string).collect()
    };
    // A listener without its files, and an address in both lists.
    let p = problems("[tls]\nlisten = [\"127.0.0.1:8080\", \"127.0.0.1:8443\", \"nowhere\"]\n", &[]);
    let text = p.join("\n");
    assert!(text.contains("tls.listen") && text.contains("server.listen lists too"), "{text}");
    assert!(text.contains("\"nowhere\" is not an address"), "{text}");
    assert!(text.contains("tls.cert_file: is required with tls.listen"), "{text}");
    assert!(text.contains("tls.key_file: is required with tls.listen"), "{text}");
    // Files with no listener, from the environment too.
    let p = problems("[tls]\ncert_file = \"c.pem\"\n", &[("LEASEHOLD_TLS_KEY_FILE", "k.pem")]);
    let text = p.join("\n");
    assert!(text.contains("tls.cert_file: is set but tls.listen names no address"), "{text}");
    assert!(text.contains("LEASEHOLD_TLS_KEY_FILE") && text.contains("no listener would use it"), "{text}");
    // Client mapping without a CA, a bad role, a CN twice.
    let text =
        "[tls]\nlisten = [\"127.0.0.1:8443\"]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\nclient_auth = \"optional\"
[[tls.clients]]\nsubject_cn = \"billing\"\nrole = \"writer\"
[[tls.clients]]\nsubject_cn = \"reports\"\nrole = \"read\"
[[tls.clients]]\nsubject_cn = \"reports\"\nrole = \"lock\"\n";
    let text = problems(text, &[]).join("\n");
    assert!(text.contains("tls.client_auth: needs tls.client_ca_file"), "{text}");
    assert!(text.contains("tls.clients: needs tls.client_ca_file"), "{text}");
    assert!(text.contains("tls.clients[0].role: is required and must be one of read, lock, write"), "{text}");
    assert!(text.contains("tls.clients[2].subject_cn: \"reports\" is mapped twice"), "{text}");
}

#[test]
fn tls_environment_overrides_and_client_mapping() {
    let text = "[tls]\nclient_ca_file = \"ca.pem\"
[[tls.clients]]\nsubject_cn = \"billing\"\nrole = \"write\"\nprefix = \"billing/\"\n";
    let vars = env(&[
        ("LEASEHOLD_TLS_LISTEN", "127.0.0.1:9443"),
        ("LEASEHOLD_TLS_CERT_FILE", "c.pem"),
        ("LEASEHOLD_TLS_KEY_FILE", "k.pem"),
        ("LEASEHOLD_TLS_CLIENT_AUTH", "optional"),
    ]);
    let c = Config::load(Some(text), &vars).unwrap();
    assert_eq!(c.tls.listen, vec!["127.0.0.1:9443".parse::<SocketAddr>().unwrap()]);
    assert_eq!(c.tls.client_auth, ClientAuth::Optional);
    let files = c.tls.files.unwrap();
    assert_eq!(files.client_ca.unwrap().path, PathBuf::from("ca.pem"));
    assert_eq!(
        c.tls.clients,
        vec![TlsClient { subject_cn: "billing".into(), role: Role::Write, prefix: "billing/".into() }]
    );
}

#[test]
fn a_public_tls_listener_needs_keys_or_required_mapped_certificates() {
    let base = "[tls]\nlisten = [\"0.0.0.0:8443\"]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\n";
    let problems = Config::load(Some(base), &[]).unwrap_err();
    assert!(problems.iter().any(|p| p.to_string().contains("tls.listen has a non-loopback address")), "{problems:?}");
    let mapped = format!("{base}client_ca_file = \"ca.pem\"\n[[tls.clients]]\nsubject_cn = \"a\"\nrole = \"lock\"\n");
    assert!(Config::load(Some(&mapped), &[]).is_ok());
    let optional = mapped.replace("client_ca_file", "client_auth = \"optional\"\nclient_ca_file");
    assert!(Config::load(Some(&optional), &[]).is_err(), "optional certificates leave the port open");
}
