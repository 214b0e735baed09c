//! Configuration: TOML text and environment overrides → raw values → `validate` → [`Config`].
//!
//! Pure: the caller passes the file's text and the environment as data; nothing here reads a
//! file or a variable. Every key has a `DEFAULT_*` constant and a documented line in
//! `config/leasehold.toml`; every key can be overridden by one environment variable
//! (`LEASEHOLD_*`), and the Small Resource Server key variables (`RESOURCE_READ`,
//! `RESOURCE_READ_LOCK`, `RESOURCE_WRITE`) add API keys. All problems are reported at once.

mod browser;
mod cluster;
mod error;
mod read;
mod rooms;
mod tls;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;

pub use browser::{
    check_origin, BrowserConfig, DEFAULT_CORS_MAX_AGE_S, DEFAULT_MAX_DASHBOARDS, MAX_CORS_ORIGINS, MAX_DASHBOARDS,
};
pub use cluster::{
    ClusterConfig, PeerConfig, PeerTlsFiles, TlsFile, DEFAULT_CLUSTER_PREFIX, DEFAULT_ELECTION_TTL_MS,
    DEFAULT_ETCD_TIMEOUT_MS, MAX_CLUSTER_PREFIX_BYTES, MAX_ETCD_ENDPOINTS, MAX_NODE_NAME_CHARS, MAX_SECRET_BYTES,
    MIN_SECRET_BYTES,
};
pub use error::ConfigError;
pub use read::KeyDoc;
pub use rooms::{valid_return_path, RoomConfig, SecretFile, ROOM_LOCK_PREFIX};
pub use tls::{ClientAuth, ListenerTlsFiles, TlsClient, TlsConfig, MAX_TLS_CLIENTS};

use crate::core::backoff::Backoff;
pub use crate::core::balance::Balance;
use crate::core::lock::{
    Declaration, LockKind, QueueKind, TableLimits, MAX_ADMIT_BURST, MAX_ADMIT_PER_MINUTE, MAX_DECLARATIONS,
};
use crate::core::names::LockName;
use crate::core::outbox::{OutboxLimits, DEFAULT_ATTEMPTS};
use crate::core::target::{HostRule, TargetPolicy};
use read::Reader;

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default data directory (relative to the working directory).
pub const DEFAULT_DATA_DIR: &str = "./data";
/// Default worker count: 0 means one per CPU.
pub const DEFAULT_WORKERS: u64 = 0;
/// Most workers.
pub const MAX_WORKERS: u64 = 256;
/// Default time in-flight requests get to finish on shutdown or reload.
pub const DEFAULT_DRAIN_TIMEOUT_MS: u64 = 10_000;
/// Default of `server.child_ping_timeout_ms`.
pub const DEFAULT_CHILD_PING_TIMEOUT_MS: u64 = 10_000;
/// Default open connections per worker before new ones get 503.
pub const DEFAULT_MAX_CONNECTIONS: u64 = 10_000;
/// Default longest delay before a crashed child is restarted.
pub const DEFAULT_RESTART_DELAY_MAX_MS: u64 = 10_000;
/// Default child deaths (of one role) that stop the service when they happen within the window.
pub const DEFAULT_CRASH_STORM_EXITS: u64 = 10;
/// Default window of the crash-storm breaker.
pub const DEFAULT_CRASH_STORM_WINDOW_MS: u64 = 60_000;
/// Default log level.
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// Default header section limit (431 above it).
pub const DEFAULT_MAX_HEADER_BYTES: u64 = 16 * 1024;
/// Request line limit (414 above it); fixed, as the README's HTTP limits say.
pub const MAX_REQUEST_LINE_BYTES: usize = 8 * 1024;
/// Default request body limit (413 above it).
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1024 * 1024;
/// Default time for a client to send its whole header section (408 after it).
pub const DEFAULT_HEADER_TIMEOUT_MS: u64 = 10_000;
/// Default idle time before a keep-alive connection is closed.
pub const DEFAULT_KEEPALIVE_TIMEOUT_MS: u64 = 60_000;
/// Default bytes of responses one connection may have queued before it stops being read.
pub const DEFAULT_MAX_UNSENT_BYTES: u64 = 1024 * 1024;
/// Default idle time of an event stream before it gets a `: ping` comment.
pub const DEFAULT_EVENT_PING_MS: u64 = 15_000;
/// Default lease TTL when an acquire gives none.
pub const DEFAULT_TTL_MS: u64 = 30_000;
/// Default longest server-side wait of one acquire.
pub const DEFAULT_MAX_WAIT_MS: u64 = 60_000;
/// Default lease TTL of Small Resource Server locks (renewed by any request with the ticket).
pub const DEFAULT_COMPAT_LEASE_TTL_MS: u64 = 60_000;
/// Default journal fsync interval for `fsync = "interval"`.
pub const DEFAULT_FSYNC_INTERVAL_MS: u64 = 100;
/// Default journal size that triggers a snapshot.
pub const DEFAULT_SNAPSHOT_BYTES: u64 = 64 * 1024 * 1024;

/// How workers get connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dispatch {
    /// One SO_REUSEPORT listener per worker slot, kept open by the master.
    Reuseport,
    /// The master accepts and passes each connection to a worker (SCM_RIGHTS).
    FdPassing,
}

/// When the journal is flushed to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// Before any reply that depends on it (one fsync per loop turn covers the turn).
    Always,
    /// Every `fsync_interval_ms`.
    Interval,
    /// Left to the kernel.
    Never,
}

/// How log lines are written (`server.log_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// `TIME LEVEL role[pid]: message key=value…`.
    Text,
    /// One JSON object per line.
    Json,
}

/// What an API key may do. Each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Status, data reads, events.
    Read,
    /// Acquire, renew, release, queue.
    Lock,
    /// Data writes, outbox, lock admin.
    Write,
}

/// One API key.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// The secret.
    pub key: String,
    /// What it may do.
    pub role: Role,
    /// Lock names it may touch must start with this (empty: any).
    pub prefix: String,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("ApiKey").field("role", &self.role).field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

/// An API key whose secret is in a file (`key_file` in `[[auth.keys]]`): the file is read
/// by the processes that load the configuration (`process::key_files`), at start and on
/// every reload, never here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFile {
    /// The file, a relative `key_file` resolved against `$CREDENTIALS_DIRECTORY` when that
    /// is set (where systemd's `LoadCredential=` puts files).
    pub path: PathBuf,
    /// The setting that named it (`auth.keys[N].key_file`), for problems.
    pub setting: String,
    /// What the key may do.
    pub role: Role,
    /// Lock names it may touch must start with this (empty: any).
    pub prefix: String,
}

/// Longest key file read: a key is at most 256 characters, and a file much larger than
/// one (or a device that never ends) is a mistake to report, not to read.
pub const MAX_KEY_FILE_BYTES: u64 = 4096;

/// `[server]`: processes and sockets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Addresses to listen on.
    pub listen: Vec<SocketAddr>,
    /// Worker processes; 0 means one per CPU.
    pub workers: u64,
    /// How connections reach workers.
    pub dispatch: Dispatch,
    /// How fd-passing picks a worker.
    pub balance: Balance,
    /// Where the journal and snapshots live.
    pub data_dir: PathBuf,
    /// Time in-flight requests get on shutdown or reload.
    pub drain_timeout_ms: u64,
    /// A child that has not answered the master's pings for this long is hung: killed and
    /// replaced.
    pub child_ping_timeout_ms: u64,
    /// Open connections per worker.
    pub max_connections: u64,
    /// Log level (`error`, `warn`, `info`, `debug`, `trace`).
    pub log_level: String,
    /// How log lines are written.
    pub log_format: LogFormat,
    /// Workers log one line per answered request (at INFO).
    pub access_log: bool,
    /// Longest delay before a crashed child is restarted.
    pub restart_delay_max_ms: u64,
    /// Deaths of one role within `crash_storm_window_ms` that stop the service (more than this).
    pub crash_storm_exits: u64,
    /// Window of the crash-storm breaker.
    pub crash_storm_window_ms: u64,
}

/// `[http]`: request limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// Header section limit.
    pub max_header_bytes: u64,
    /// Body limit.
    pub max_body_bytes: u64,
    /// Time to send the header section.
    pub header_timeout_ms: u64,
    /// Idle keep-alive time.
    pub keepalive_timeout_ms: u64,
    /// Unsent response bytes of one connection above which it is not read.
    pub max_unsent_bytes: u64,
    /// Idle time of an event stream before it gets a `: ping` comment.
    pub event_ping_ms: u64,
}

/// `[locks]`: lease and queue rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocksConfig {
    /// Longest server-side wait.
    pub max_wait_ms: u64,
    /// TTL of Small Resource Server locks.
    pub compat_lease_ttl_ms: u64,
    /// Limits and presence timings of the lease table.
    pub table: TableLimits,
}

/// `[journal]`: durability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalConfig {
    /// When to fsync.
    pub fsync: Fsync,
    /// Interval for `Fsync::Interval`.
    pub fsync_interval_ms: u64,
    /// Journal size that triggers a snapshot.
    pub snapshot_bytes: u64,
}

/// `[outbox]`: deferred HTTP calls and their courier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxConfig {
    /// Bounds and retry schedule.
    pub limits: OutboxLimits,
    /// Attempts of a call that does not say.
    pub default_attempts: u32,
    /// Which targets may be called.
    pub targets: TargetPolicy,
    /// Time to connect to a target.
    pub connect_timeout_ms: u64,
    /// Time for a whole attempt.
    pub timeout_ms: u64,
    /// Deliveries the courier makes at once.
    pub concurrency: u32,
    /// Signing secret (empty: deliveries are not signed).
    pub secret: String,
}

/// `[auth]`: API keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// Keys from the file and the environment (and, once read, from key files).
    pub keys: Vec<ApiKey>,
    /// Keys whose secrets are in files, still to be read ([`AuthConfig::add_file_key`]).
    pub key_files: Vec<KeyFile>,
    /// Allow serving non-loopback clients without any key.
    pub insecure_anonymous: bool,
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `[server]`.
    pub server: ServerConfig,
    /// `[http]`.
    pub http: HttpConfig,
    /// `[locks]`.
    pub locks: LocksConfig,
    /// `[journal]`.
    pub journal: JournalConfig,
    /// `[outbox]`.
    pub outbox: OutboxConfig,
    /// `[auth]`.
    pub auth: AuthConfig,
    /// `[cluster]`: `None` (single node) unless `cluster.etcd_endpoints` is set.
    pub cluster: Option<ClusterConfig>,
    /// `[[rooms]]`: waiting rooms (each also declares its lock in `locks.table.declared`).
    pub rooms: Vec<RoomConfig>,
    /// `[browser]`: ticket tokens, CORS, dashboards.
    pub browser: BrowserConfig,
    /// `[tls]`: TLS listeners and client certificates.
    pub tls: TlsConfig,
    /// Things worth telling the operator that do not stop the start (unknown variables…).
    pub warnings: Vec<String>,
}

/// The directory systemd's `LoadCredential=` fills; relative `key_file` paths are in it.
pub const CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";

/// Environment variables the client side of the binary reads; not configuration keys.
const CLIENT_VARIABLES: &[&str] = &["LEASEHOLD_URL", "LEASEHOLD_KEY", "LEASEHOLD_CONFIG"];

/// Environment variables the binary sets for itself (a binary upgrade hands the new master
/// its sockets' layout); not configuration keys, and no reason for a warning.
const INTERNAL_VARIABLES: &[&str] = &["LEASEHOLD_UPGRADE"];

/// The Small Resource Server key variables and the role each grants.
pub const COMPAT_KEY_VARIABLES: &[(&str, Role)] =
    &[("RESOURCE_READ", Role::Read), ("RESOURCE_READ_LOCK", Role::Lock), ("RESOURCE_WRITE", Role::Write)];

impl Config {
    /// Loads a configuration from the text of a TOML file (`None`: the embedded defaults)
    /// and the process environment as name/value pairs. Returns every problem found.
    pub fn load(file_text: Option<&str>, env: &[(String, String)]) -> Result<Config, Vec<ConfigError>> {
        let root: toml::Table = match file_text {
            None => toml::Table::new(),
            Some(text) => match text.parse::<toml::Table>() {
                Ok(root) => root,
                Err(e) => {
                    let line = e.span().map_or(0, |s| text[..s.start.min(text.len())].lines().count().max(1));
                    return Err(vec![ConfigError::Syntax { line, message: e.message().to_string() }]);
                }
            },
        };
        let env: BTreeMap<String, String> = env.iter().cloned().collect();
        let mut r = Reader::new(&root, &env);
        let config = validate(&mut r, &env);
        r.unknown_keys();
        if r.problems.is_empty() {
            Ok(config)
        } else {
            Err(r.problems)
        }
    }

    /// The embedded defaults.
    pub fn defaults() -> Config {
        Config::load(None, &[]).expect("the embedded defaults are valid")
    }

    /// Every key the configuration knows, with its environment variable.
    pub fn known_keys() -> Vec<KeyDoc> {
        let root = toml::Table::new();
        let env = BTreeMap::new();
        let mut r = Reader::new(&root, &env);
        validate(&mut r, &env);
        r.keys
    }

    /// Whether every listen address is a loopback address.
    pub fn loopback_only(&self) -> bool {
        self.server.loopback_only()
    }

    /// Every address the master listens on: `server.listen` (plain HTTP), then `tls.listen`.
    /// A listener's index in this list tells a worker whether it speaks TLS
    /// ([`Config::is_tls_listener`]).
    pub fn listen_addresses(&self) -> Vec<SocketAddr> {
        self.server.listen.iter().chain(&self.tls.listen).copied().collect()
    }

    /// Whether listener `index` of [`Config::listen_addresses`] speaks TLS.
    pub fn is_tls_listener(&self, index: usize) -> bool {
        index >= self.server.listen.len()
    }
}

impl ServerConfig {
    /// Whether every listen address is a loopback address.
    pub fn loopback_only(&self) -> bool {
        self.listen.iter().all(|a| a.ip().is_loopback())
    }
}

/// Reads every key with its default and checks each value and the rules between them.
fn validate(r: &mut Reader<'_>, env: &BTreeMap<String, String>) -> Config {
    let server = validate_server(r);
    let http = HttpConfig {
        max_header_bytes: r.int(
            "http",
            "max_header_bytes",
            "LEASEHOLD_MAX_HEADER_BYTES",
            DEFAULT_MAX_HEADER_BYTES,
            1024,
            1024 * 1024,
        ),
        max_body_bytes: r.int(
            "http",
            "max_body_bytes",
            "LEASEHOLD_MAX_BODY_BYTES",
            DEFAULT_MAX_BODY_BYTES,
            1,
            64 * 1024 * 1024,
        ),
        header_timeout_ms: r.int(
            "http",
            "header_timeout_ms",
            "LEASEHOLD_HEADER_TIMEOUT_MS",
            DEFAULT_HEADER_TIMEOUT_MS,
            100,
            600_000,
        ),
        keepalive_timeout_ms: r.int(
            "http",
            "keepalive_timeout_ms",
            "LEASEHOLD_KEEPALIVE_TIMEOUT_MS",
            DEFAULT_KEEPALIVE_TIMEOUT_MS,
            100,
            3_600_000,
        ),
        max_unsent_bytes: r.int(
            "http",
            "max_unsent_bytes",
            "LEASEHOLD_MAX_UNSENT_BYTES",
            DEFAULT_MAX_UNSENT_BYTES,
            16 * 1024,
            1 << 30,
        ),
        event_ping_ms: r.int("http", "event_ping_ms", "LEASEHOLD_EVENT_PING_MS", DEFAULT_EVENT_PING_MS, 100, 3_600_000),
    };
    let mut locks = validate_locks(r);
    let (rooms, room_variables) = rooms::validate_rooms(r, env, &mut locks.table);
    let journal = JournalConfig {
        fsync: [Fsync::Always, Fsync::Interval, Fsync::Never]
            [r.choice("journal", "fsync", "LEASEHOLD_FSYNC", &["always", "interval", "never"], 0)],
        fsync_interval_ms: r.int(
            "journal",
            "fsync_interval_ms",
            "LEASEHOLD_FSYNC_INTERVAL_MS",
            DEFAULT_FSYNC_INTERVAL_MS,
            1,
            60_000,
        ),
        snapshot_bytes: r.int(
            "journal",
            "snapshot_bytes",
            "LEASEHOLD_SNAPSHOT_BYTES",
            DEFAULT_SNAPSHOT_BYTES,
            1024 * 1024,
            1 << 40,
        ),
    };
    let outbox = validate_outbox(r);
    let tls = tls::validate_tls(r, &server.listen);
    let auth = validate_auth(r, env, &server, &tls);
    let cluster = cluster::validate_cluster(r);
    let browser = browser::validate_browser(r);
    let mut warnings = Vec::new();
    let mut known: BTreeSet<&str> = r.keys.iter().map(|k| k.env).collect();
    known.extend(room_variables.iter().map(String::as_str));
    for name in env.keys().filter(|n| n.starts_with("LEASEHOLD_")) {
        if !known.contains(name.as_str())
            && !CLIENT_VARIABLES.contains(&name.as_str())
            && !INTERNAL_VARIABLES.contains(&name.as_str())
        {
            warnings.push(format!("environment variable {name} is not a leasehold setting; it is ignored"));
        }
    }
    Config { server, http, locks, journal, outbox, auth, cluster, rooms, browser, tls, warnings }
}

fn validate_outbox(r: &mut Reader<'_>) -> OutboxConfig {
    let d = OutboxLimits::DEFAULT;
    let max_attempts =
        r.int("outbox", "max_attempts", "LEASEHOLD_OUTBOX_MAX_ATTEMPTS", d.max_attempts.into(), 1, 1_000) as u32;
    let default_attempts =
        r.int("outbox", "default_attempts", "LEASEHOLD_OUTBOX_DEFAULT_ATTEMPTS", DEFAULT_ATTEMPTS.into(), 1, 1_000)
            as u32;
    if default_attempts > max_attempts {
        r.invalid(
            "outbox.default_attempts",
            format!("({default_attempts}) must not exceed outbox.max_attempts ({max_attempts})"),
        );
    }
    let base_ms = r.int("outbox", "base_ms", "LEASEHOLD_OUTBOX_BASE_MS", d.backoff.base_ms, 1, 3_600_000);
    let cap_ms = r.int("outbox", "cap_ms", "LEASEHOLD_OUTBOX_CAP_MS", d.backoff.cap_ms, 1, 86_400_000);
    if base_ms > cap_ms {
        r.invalid("outbox.base_ms", format!("({base_ms}) must not exceed outbox.cap_ms ({cap_ms})"));
    }
    let limits = OutboxLimits {
        max_entries: r.int("outbox", "max_entries", "LEASEHOLD_OUTBOX_MAX_ENTRIES", d.max_entries.into(), 1, 10_000_000)
            as u32,
        max_body_bytes: r.int(
            "outbox",
            "max_body_bytes",
            "LEASEHOLD_OUTBOX_MAX_BODY_BYTES",
            d.max_body_bytes.into(),
            0,
            // Even escaped six times over in JSON, one call still fits an IPC frame.
            MAX_OUTBOX_CALL_BYTES,
        ) as u32,
        max_attempts,
        backoff: Backoff {
            base_ms,
            factor: r.int("outbox", "factor", "LEASEHOLD_OUTBOX_FACTOR", d.backoff.factor.into(), 1, 100) as u32,
            cap_ms,
        },
        max_callbacks: r.int(
            "outbox",
            "max_callbacks",
            "LEASEHOLD_OUTBOX_MAX_CALLBACKS",
            d.max_callbacks.into(),
            0,
            10_000_000,
        ) as u32,
        max_total_bytes: r.int(
            "outbox",
            "max_total_bytes",
            "LEASEHOLD_OUTBOX_MAX_TOTAL_BYTES",
            d.max_total_bytes,
            1 << 20,
            1 << 40,
        ),
    };
    if u64::from(limits.max_body_bytes) > limits.max_total_bytes {
        r.invalid(
            "outbox.max_body_bytes",
            format!("({}) must not exceed outbox.max_total_bytes ({})", limits.max_body_bytes, limits.max_total_bytes),
        );
    }
    let targets = TargetPolicy {
        allow_hosts: host_rules(r, "allow_hosts", "LEASEHOLD_OUTBOX_ALLOW_HOSTS"),
        deny_hosts: host_rules(r, "deny_hosts", "LEASEHOLD_OUTBOX_DENY_HOSTS"),
        allow_local: r.bool("outbox", "allow_local", "LEASEHOLD_OUTBOX_ALLOW_LOCAL", false),
        allow_private: r.bool("outbox", "allow_private", "LEASEHOLD_OUTBOX_ALLOW_PRIVATE", false),
        // Filled by the processes that check targets: finding them is I/O.
        own_addresses: Vec::new(),
    };
    OutboxConfig {
        limits,
        default_attempts,
        targets,
        connect_timeout_ms: r.int(
            "outbox",
            "connect_timeout_ms",
            "LEASEHOLD_OUTBOX_CONNECT_TIMEOUT_MS",
            5_000,
            1,
            600_000,
        ),
        timeout_ms: r.int("outbox", "timeout_ms", "LEASEHOLD_OUTBOX_TIMEOUT_MS", 30_000, 1, 3_600_000),
        concurrency: r.int("outbox", "concurrency", "LEASEHOLD_OUTBOX_CONCURRENCY", 4, 1, 256) as u32,
        secret: r.string("outbox", "secret", "LEASEHOLD_OUTBOX_SECRET").map_or(String::new(), |(_, v)| v),
    }
}

/// Largest `outbox.max_body_bytes`.
pub const MAX_OUTBOX_CALL_BYTES: u64 = 1 << 20;

/// A list of outbox host rules; every entry that is not a rule is reported.
fn host_rules(r: &mut Reader<'_>, key: &str, env: &'static str) -> Vec<HostRule> {
    let Some((path, items)) = r.strings("outbox", key, env) else { return Vec::new() };
    let mut rules = Vec::with_capacity(items.len());
    for item in items {
        match HostRule::parse(&item) {
            Ok(rule) => rules.push(rule),
            Err(why) => r.invalid(path.clone(), why),
        }
    }
    rules
}

fn validate_server(r: &mut Reader<'_>) -> ServerConfig {
    let mut listen = Vec::new();
    match r.strings("server", "listen", "LEASEHOLD_LISTEN") {
        None => listen.push(DEFAULT_LISTEN.parse().expect("default listen address parses")),
        Some((path, items)) => {
            if items.is_empty() {
                r.invalid(path.clone(), "must name at least one address");
            }
            for item in items {
                match item.parse::<SocketAddr>() {
                    Ok(addr) if listen.contains(&addr) => r.invalid(path.clone(), format!("lists {item} twice")),
                    Ok(addr) => listen.push(addr),
                    Err(_) => {
                        r.invalid(path.clone(), format!("{item:?} is not an address like 127.0.0.1:8080 or [::1]:8080"))
                    }
                }
            }
        }
    }
    let workers = r.int("server", "workers", "LEASEHOLD_WORKERS", DEFAULT_WORKERS, 0, MAX_WORKERS);
    let dispatch = [Dispatch::Reuseport, Dispatch::FdPassing]
        [r.choice("server", "dispatch", "LEASEHOLD_DISPATCH", &["reuseport", "fd-passing"], 0)];
    let balance = [Balance::LeastConnections, Balance::RoundRobin]
        [r.choice("server", "balance", "LEASEHOLD_BALANCE", &["least-connections", "round-robin"], 0)];
    let data_dir = match r.string("server", "data_dir", "LEASEHOLD_DATA_DIR") {
        Some((path, dir)) if dir.trim().is_empty() => {
            r.invalid(path, "must not be empty");
            PathBuf::from(DEFAULT_DATA_DIR)
        }
        Some((_, dir)) => PathBuf::from(dir),
        None => PathBuf::from(DEFAULT_DATA_DIR),
    };
    let drain_timeout_ms =
        r.int("server", "drain_timeout_ms", "LEASEHOLD_DRAIN_TIMEOUT_MS", DEFAULT_DRAIN_TIMEOUT_MS, 0, 600_000);
    let child_ping_timeout_ms = r.int(
        "server",
        "child_ping_timeout_ms",
        "LEASEHOLD_CHILD_PING_TIMEOUT_MS",
        DEFAULT_CHILD_PING_TIMEOUT_MS,
        1_000,
        600_000,
    );
    let max_connections =
        r.int("server", "max_connections", "LEASEHOLD_MAX_CONNECTIONS", DEFAULT_MAX_CONNECTIONS, 1, 1_000_000);
    let log_level = match r.string("server", "log_level", "LEASEHOLD_LOG_LEVEL") {
        Some((path, level)) => {
            let level = level.trim().to_ascii_lowercase();
            if !["error", "warn", "info", "debug", "trace", "off"].contains(&level.as_str()) {
                r.invalid(path, format!("is {level:?}; it must be one of off, error, warn, info, debug, trace"));
            }
            level
        }
        None => DEFAULT_LOG_LEVEL.to_string(),
    };
    let log_format = [LogFormat::Text, LogFormat::Json]
        [r.choice("server", "log_format", "LEASEHOLD_LOG_FORMAT", &["text", "json"], 0)];
    let access_log = r.bool("server", "access_log", "LEASEHOLD_ACCESS_LOG", false);
    let restart_delay_max_ms = r.int(
        "server",
        "restart_delay_max_ms",
        "LEASEHOLD_RESTART_DELAY_MAX_MS",
        DEFAULT_RESTART_DELAY_MAX_MS,
        100,
        600_000,
    );
    let crash_storm_exits =
        r.int("server", "crash_storm_exits", "LEASEHOLD_CRASH_STORM_EXITS", DEFAULT_CRASH_STORM_EXITS, 1, 10_000);
    let crash_storm_window_ms = r.int(
        "server",
        "crash_storm_window_ms",
        "LEASEHOLD_CRASH_STORM_WINDOW_MS",
        DEFAULT_CRASH_STORM_WINDOW_MS,
        1_000,
        86_400_000,
    );
    ServerConfig {
        listen,
        workers,
        dispatch,
        balance,
        data_dir,
        drain_timeout_ms,
        child_ping_timeout_ms,
        max_connections,
        log_level,
        log_format,
        access_log,
        restart_delay_max_ms,
        crash_storm_exits,
        crash_storm_window_ms,
    }
}

fn validate_locks(r: &mut Reader<'_>) -> LocksConfig {
    let d = TableLimits::DEFAULT;
    let min_ttl_ms = r.int("locks", "min_ttl_ms", "LEASEHOLD_MIN_TTL_MS", d.min_ttl_ms, 1, 3_600_000);
    let max_ttl_ms = r.int("locks", "max_ttl_ms", "LEASEHOLD_MAX_TTL_MS", d.max_ttl_ms, 1, 365 * 24 * 3_600_000);
    if min_ttl_ms > max_ttl_ms {
        r.invalid("locks.min_ttl_ms", format!("({min_ttl_ms}) must not exceed locks.max_ttl_ms ({max_ttl_ms})"));
    }
    let ttl_within = |r: &mut Reader<'_>, key: &str, env: &'static str, default: u64| {
        let value = r.int("locks", key, env, default, 1, u64::MAX);
        if value < min_ttl_ms || value > max_ttl_ms {
            r.invalid(
                format!("locks.{key}"),
                format!(
                    "({value}) must lie between locks.min_ttl_ms ({min_ttl_ms}) and locks.max_ttl_ms ({max_ttl_ms})"
                ),
            );
        }
        value
    };
    let default_ttl_ms = ttl_within(r, "default_ttl_ms", "LEASEHOLD_DEFAULT_TTL_MS", DEFAULT_TTL_MS);
    let compat_lease_ttl_ms =
        ttl_within(r, "compat_lease_ttl_ms", "LEASEHOLD_COMPAT_LEASE_TTL_MS", DEFAULT_COMPAT_LEASE_TTL_MS);
    let max_wait_ms = r.int("locks", "max_wait_ms", "LEASEHOLD_MAX_WAIT_MS", DEFAULT_MAX_WAIT_MS, 0, 3_600_000);
    let mut table = TableLimits {
        min_ttl_ms,
        max_ttl_ms,
        max_limit: r.int("locks", "max_limit", "LEASEHOLD_MAX_LIMIT", d.max_limit.into(), 1, 1_000_000) as u32,
        max_locks: r.int("locks", "max_locks", "LEASEHOLD_MAX_LOCKS", d.max_locks.into(), 1, 100_000_000) as u32,
        max_waiters_per_lock: r.int(
            "locks",
            "max_waiters_per_lock",
            "LEASEHOLD_MAX_WAITERS_PER_LOCK",
            d.max_waiters_per_lock.into(),
            1,
            10_000_000,
        ) as u32,
        waiter_ttl_ms: r.int("locks", "waiter_ttl_ms", "LEASEHOLD_WAITER_TTL_MS", d.waiter_ttl_ms, 100, 3_600_000),
        claim_ms: r.int("locks", "claim_ms", "LEASEHOLD_CLAIM_MS", d.claim_ms, 1, 3_600_000),
        max_data_keys: r.int("locks", "max_data_keys", "LEASEHOLD_MAX_DATA_KEYS", d.max_data_keys.into(), 0, 100_000)
            as u32,
        max_data_bytes: r.int(
            "locks",
            "max_data_bytes",
            "LEASEHOLD_MAX_DATA_BYTES",
            d.max_data_bytes.into(),
            0,
            64 * 1024 * 1024,
        ) as u32,
        max_data_bytes_total: r.int(
            "locks",
            "max_data_bytes_total",
            "LEASEHOLD_MAX_DATA_BYTES_TOTAL",
            d.max_data_bytes_total,
            0,
            1 << 40,
        ),
        max_tickets_total: r.int(
            "locks",
            "max_tickets_total",
            "LEASEHOLD_MAX_TICKETS_TOTAL",
            d.max_tickets_total.into(),
            1,
            1_000_000_000,
        ) as u32,
        max_resources: r.int(
            "locks",
            "max_resources",
            "LEASEHOLD_MAX_RESOURCES",
            d.max_resources.into(),
            0,
            100_000_000,
        ) as u32,
        max_event_streams: r.int(
            "locks",
            "max_event_streams",
            "LEASEHOLD_MAX_EVENT_STREAMS",
            d.max_event_streams.into(),
            0,
            10_000_000,
        ) as u32,
        callback_presence: d.callback_presence,
        default_ttl_ms,
        // `[[locks.declare]]`: read below, checked against the limits above.
        declared: Vec::new(),
    };
    table.declared = declarations(r, &table);
    if u64::from(table.max_data_bytes) > table.max_data_bytes_total {
        r.invalid(
            "locks.max_data_bytes",
            format!(
                "({}) must not exceed locks.max_data_bytes_total ({})",
                table.max_data_bytes, table.max_data_bytes_total
            ),
        );
    }
    LocksConfig { max_wait_ms, compat_lease_ttl_ms, table }
}

/// The fields of a `[[locks.declare]]` entry.
const DECLARATION_FIELDS: &[&str] = &[
    "name",
    "prefix",
    "kind",
    "limit",
    "queue",
    "min_ttl_ms",
    "max_ttl_ms",
    "default_ttl_ms",
    "admit_per_minute",
    "admit_burst",
    "waiter_ttl_ms",
    "claim_ms",
];

/// `[[locks.declare]]`: locks whose shape the server fixes (file only: no variable sets
/// them). Each entry is checked on its own (`Declaration::check` against the global
/// `limits`) and against the others (a name or prefix declared twice); problems name the
/// entry as `locks.declare[N]`, N counted from 0 as in `auth.keys[N]`. Entries with a
/// problem are left out (the configuration is refused anyway).
fn declarations(r: &mut Reader<'_>, limits: &TableLimits) -> Vec<Declaration> {
    let entries = r.tables("locks", "declare");
    if entries.len() > MAX_DECLARATIONS {
        r.invalid(
            "locks.declare",
            format!("has {} entries; at most {MAX_DECLARATIONS} locks or prefixes may be declared", entries.len()),
        );
        return Vec::new();
    }
    let mut declared: Vec<Declaration> = Vec::with_capacity(entries.len());
    // Where each name and prefix was declared first.
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    let mut prefixes: BTreeMap<String, String> = BTreeMap::new();
    for (path, entry) in entries {
        let d = declaration(r, &path, entry, limits);
        // Told even when the entry has problems of its own, so one run lists them all.
        let target = ["name", "prefix"]
            .into_iter()
            .find_map(|field| entry.get(field).and_then(toml::Value::as_str).map(|v| (field, v.to_string())));
        let mut again = false;
        if let Some((field, value)) = target {
            let seen = if field == "name" { &mut names } else { &mut prefixes };
            match seen.get(&value) {
                Some(first) => {
                    r.invalid(format!("{path}.{field}"), format!("declares {field} {value:?} again ({first} did)"));
                    again = true;
                }
                None => {
                    seen.insert(value, path);
                }
            }
        }
        if let (Some(d), false) = (d, again) {
            declared.push(d);
        }
    }
    declared
}

/// One `[[locks.declare]]` entry at `path`, or `None` after recording its problems.
fn declaration(r: &mut Reader<'_>, path: &str, entry: &toml::Table, limits: &TableLimits) -> Option<Declaration> {
    let before = r.problems.len();
    for field in entry.keys() {
        if !DECLARATION_FIELDS.contains(&field.as_str()) {
            r.invalid(
                format!("{path}.{field}"),
                format!("unknown key (a declaration has {})", DECLARATION_FIELDS.join(", ")),
            );
        }
    }
    let name = r.entry_string(path, entry, "name").and_then(|text| match LockName::parse(&text) {
        Ok(name) => Some(name),
        Err(e) => {
            r.invalid(format!("{path}.name"), format!("{text:?} is not a lock name: {e}"));
            None
        }
    });
    let prefix = r.entry_string(path, entry, "prefix");
    let mut d = Declaration::new(name, prefix);
    if let Some(kind) = r.entry_choice(path, entry, "kind", &["semaphore", "rw"]) {
        d.kind = [LockKind::Semaphore, LockKind::Rw][kind];
    }
    if let Some(queue) = r.entry_choice(path, entry, "queue", &["fifo", "lottery"]) {
        d.queue = [QueueKind::Fifo, QueueKind::Lottery][queue];
    }
    let int = |r: &mut Reader<'_>, key: &str, min: u64, max: u64| r.entry_int(path, entry, key, min, max);
    if let Some(limit) = int(r, "limit", 1, limits.max_limit.into()) {
        d.limit = limit as u32;
    }
    // TTLs: any number here; `check` holds them to the global bounds, naming both.
    d.min_ttl_ms = int(r, "min_ttl_ms", 1, u64::MAX);
    d.max_ttl_ms = int(r, "max_ttl_ms", 1, u64::MAX);
    d.default_ttl_ms = int(r, "default_ttl_ms", 1, u64::MAX);
    d.admit_per_minute = int(r, "admit_per_minute", 1, MAX_ADMIT_PER_MINUTE.into()).map(|n| n as u32);
    if let Some(burst) = int(r, "admit_burst", 1, MAX_ADMIT_BURST.into()) {
        d.admit_burst = burst as u32;
    }
    // The ranges of the global keys of the same names.
    d.waiter_ttl_ms = int(r, "waiter_ttl_ms", 100, 3_600_000);
    d.claim_ms = int(r, "claim_ms", 1, 3_600_000);
    if r.problems.len() > before {
        return None;
    }
    if let Err(problem) = d.check(limits) {
        r.invalid(format!("{path}{}", problem_key(&problem)), problem);
        return None;
    }
    Some(d)
}

/// The field a problem of `Declaration::check` is about, as `.field` (empty when it is
/// about the entry as a whole): its sentence starts with the field's name, except for the
/// rule on read/write locks, which is about `kind`.
fn problem_key(problem: &str) -> String {
    let first = problem.split([' ', ';']).next().unwrap_or("");
    if DECLARATION_FIELDS.contains(&first) {
        format!(".{first}")
    } else if problem.contains("read/write") {
        ".kind".into()
    } else {
        String::new()
    }
}

/// An entry's `role` (required) and `prefix` (optional, `""` by default), as an API key
/// and a TLS client certificate mapping both have them; a problem is named `{path}.role` or
/// `{path}.prefix`, and the entry is left out.
fn role_and_prefix(r: &mut Reader<'_>, path: &str, table: &toml::Table) -> Option<(Role, String)> {
    let Some(role) = table.get("role").and_then(|v| v.as_str()).and_then(parse_role) else {
        r.invalid(format!("{path}.role"), "is required and must be one of read, lock, write");
        return None;
    };
    match table.get("prefix") {
        None => Some((role, String::new())),
        Some(v) => match v.as_str() {
            Some(p) => Some((role, p.to_string())),
            None => {
                r.invalid(format!("{path}.prefix"), "must be a string");
                None
            }
        },
    }
}

fn parse_role(text: &str) -> Option<Role> {
    match text {
        "read" => Some(Role::Read),
        "lock" => Some(Role::Lock),
        "write" => Some(Role::Write),
        _ => None,
    }
}

fn validate_auth(
    r: &mut Reader<'_>,
    env: &BTreeMap<String, String>,
    server: &ServerConfig,
    tls: &TlsConfig,
) -> AuthConfig {
    let insecure_anonymous = r.bool("auth", "insecure_anonymous", "LEASEHOLD_INSECURE_ANONYMOUS", false);
    let mut keys: Vec<ApiKey> = Vec::new();
    let mut key_files: Vec<KeyFile> = Vec::new();
    for (path, table) in r.tables("auth", "keys") {
        for field in table.keys() {
            if !["key", "key_file", "role", "prefix"].contains(&field.as_str()) {
                r.invalid(format!("{path}.{field}"), "unknown key (an API key has key or key_file, role and prefix)");
            }
        }
        let secret = match (table.get("key"), table.get("key_file")) {
            (Some(_), Some(_)) => {
                r.invalid(format!("{path}.key_file"), "must not be given with key: the secret is one or the other");
                continue;
            }
            (Some(k), None) => match k.as_str() {
                Some(k) => Secret::Inline(k.to_string()),
                None => {
                    r.invalid(format!("{path}.key"), "must be a string");
                    continue;
                }
            },
            (None, Some(f)) => match f.as_str() {
                Some(f) if !f.trim().is_empty() => Secret::File(key_file_path(f, env)),
                _ => {
                    r.invalid(format!("{path}.key_file"), "must name a file");
                    continue;
                }
            },
            (None, None) => {
                r.invalid(format!("{path}.key"), "is required (or key_file) and must be a string");
                continue;
            }
        };
        let Some((role, prefix)) = role_and_prefix(r, &path, table) else { continue };
        match secret {
            Secret::Inline(key) => push_key(r, &mut keys, path, ApiKey { key, role, prefix }),
            Secret::File(file) => {
                key_files.push(KeyFile { path: file, setting: format!("{path}.key_file"), role, prefix })
            }
        }
    }
    for (name, role) in COMPAT_KEY_VARIABLES {
        if let Some(key) = env.get(*name).filter(|k| !k.is_empty()) {
            // As in Small Resource Server, a key given for several roles gets the highest.
            match keys.iter_mut().find(|k| &k.key == key && k.prefix.is_empty()) {
                Some(existing) => existing.role = existing.role.max(*role),
                None => push_key(
                    r,
                    &mut keys,
                    (*name).to_string(),
                    ApiKey { key: key.clone(), role: *role, prefix: String::new() },
                ),
            }
        }
    }
    if keys.is_empty() && key_files.is_empty() && !insecure_anonymous && !server.loopback_only() {
        r.invalid(
            "auth.keys",
            "no API key is configured but server.listen has a non-loopback address; add a key or set auth.insecure_anonymous = true",
        );
    }
    if keys.is_empty()
        && key_files.is_empty()
        && !insecure_anonymous
        && tls.listens_beyond_loopback()
        && !tls.certificates_required()
    {
        r.invalid(
            "auth.keys",
            "no API key is configured but tls.listen has a non-loopback address; add a key, require mapped client certificates (tls.client_ca_file and [[tls.clients]]) or set auth.insecure_anonymous = true",
        );
    }
    AuthConfig { keys, key_files, insecure_anonymous }
}

/// Where an API key's secret is.
enum Secret {
    Inline(String),
    File(PathBuf),
}

/// A `key_file` as a path: a relative one is in `$CREDENTIALS_DIRECTORY` when that is set
/// (systemd's `LoadCredential=NAME:…` puts the file there as `NAME`), else relative to the
/// working directory.
fn key_file_path(given: &str, env: &BTreeMap<String, String>) -> PathBuf {
    let path = PathBuf::from(given);
    match env.get(CREDENTIALS_DIRECTORY).filter(|d| !d.is_empty()) {
        Some(dir) if path.is_relative() => PathBuf::from(dir).join(path),
        _ => path,
    }
}

/// Why `key` cannot join `keys`, if it cannot.
fn key_problem(keys: &[ApiKey], key: &ApiKey) -> Option<&'static str> {
    if key.key.len() < 4 || key.key.len() > 256 || !key.key.bytes().all(|b| b.is_ascii_graphic()) {
        Some("the key must be 4 to 256 printable characters without spaces")
    } else if keys.iter().any(|k| k.key == key.key) {
        Some("the same key is configured twice")
    } else {
        None
    }
}

fn push_key(r: &mut Reader<'_>, keys: &mut Vec<ApiKey>, path: String, key: ApiKey) {
    match key_problem(keys, &key) {
        Some(problem) => r.invalid(path, problem),
        None => keys.push(key),
    }
}

impl AuthConfig {
    /// Adds the key of `file` whose file holds `text` (surrounding white space, such as the
    /// newline `echo` leaves, is not part of it), checked as a key written inline is.
    pub fn add_file_key(&mut self, file: &KeyFile, text: &str) -> Result<(), ConfigError> {
        let key = ApiKey { key: text.trim().to_string(), role: file.role, prefix: file.prefix.clone() };
        match key_problem(&self.keys, &key) {
            Some(problem) => Err(ConfigError::Invalid {
                key: file.setting.clone(),
                reason: format!("{}: {problem}", file.path.display()),
            }),
            None => {
                self.keys.push(key);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests;
