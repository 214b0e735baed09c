//! `[cluster]`: the keys of cluster mode (README, "Configuration"): the etcd endpoints, the
//! key prefix, this node's name and advertised URL, the election timings, and the peer
//! link (where this node listens for other nodes, where they reach it, the secret they
//! share, and the PEM files of its TLS). Pure like the rest of `config/`: it reads through
//! the [`Reader`] and checks values, it never talks to etcd, resolves a name or opens a
//! file (the TLS files are read by `process::tls`).
//!
//! Cluster mode is on exactly when `cluster.etcd_endpoints` is given; any other `[cluster]`
//! key without it is a mistake, reported rather than ignored.

use super::read::Reader;

/// Default prefix of every key leasehold writes in etcd.
pub const DEFAULT_CLUSTER_PREFIX: &str = "/leasehold";
/// Default TTL of the leader's etcd lease.
pub const DEFAULT_ELECTION_TTL_MS: u64 = 3_000;
/// Shortest `cluster.election_ttl_ms`: etcd grants no lease shorter than 3 s (docs/cluster.md).
pub const MIN_ELECTION_TTL_MS: u64 = 3_000;
/// Default time one etcd request may take.
pub const DEFAULT_ETCD_TIMEOUT_MS: u64 = 1_000;
/// Default of `cluster.snapshot_every_batches`.
pub const DEFAULT_SNAPSHOT_EVERY_BATCHES: u64 = 10_000;
/// Most etcd endpoints.
pub const MAX_ETCD_ENDPOINTS: usize = 16;
/// Longest cluster prefix.
pub const MAX_CLUSTER_PREFIX_BYTES: usize = 128;
/// Longest node name.
pub const MAX_NODE_NAME_CHARS: usize = 63;
/// Shortest `cluster.secret`.
pub const MIN_SECRET_BYTES: usize = 16;
/// Longest `cluster.secret`.
pub const MAX_SECRET_BYTES: usize = 1_024;

/// `[cluster]`: present only in cluster mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// etcd's client URLs, each as `scheme://host:port` (lower-case scheme and host).
    pub etcd_endpoints: Vec<String>,
    /// Prefix of every key leasehold writes in etcd (so clusters can share one etcd).
    pub prefix: String,
    /// This node's name, unique within the cluster.
    pub node_name: String,
    /// Where clients reach this node's API, as `scheme://host:port`.
    pub advertise_url: String,
    /// TTL of the leader's etcd lease: a whole number of seconds, in ms.
    pub election_ttl_ms: u64,
    /// How long one etcd request may take; below `election_ttl_ms`.
    pub etcd_timeout_ms: u64,
    /// The peer link (docs/cluster.md, "The peer link"), when configured: followers forward
    /// changes to the leader over it.
    pub peer: Option<PeerConfig>,
    /// A node snapshots its replica after this many batches of the log (or once
    /// `journal.snapshot_bytes` of them, whichever comes first).
    pub snapshot_every_batches: u64,
}

/// `cluster.peer_listen`, `peer_advertise`, `secret` and `peer_tls_*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// Where this node listens for other nodes.
    pub listen: std::net::SocketAddr,
    /// Where other nodes reach it, `host:port`.
    pub advertise: String,
    /// What every node of the cluster presents when it connects.
    pub secret: String,
    /// The link's TLS files, when it runs over TLS (all three keys given); plain TCP without.
    pub tls: Option<PeerTlsFiles>,
}

/// `cluster.peer_tls_cert`, `peer_tls_key` and `peer_tls_ca`: PEM files, read and checked
/// by `process::tls` (for `check-config` too), never here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTlsFiles {
    /// This node's certificate chain, its own certificate first.
    pub cert: TlsFile,
    /// The private key of that certificate.
    pub key: TlsFile,
    /// The certificates of the CA every node's certificate must chain to.
    pub ca: TlsFile,
}

/// One TLS file: where it is, and the key that named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFile {
    /// The path as given (relative to the working directory unless absolute).
    pub path: std::path::PathBuf,
    /// The key as problems name it, `cluster.peer_tls_cert` or with `(from VARIABLE)`.
    pub setting: String,
}

const SECTION: &str = "cluster";
const ENDPOINTS_ENV: &str = "LEASEHOLD_ETCD_ENDPOINTS";
/// The peer link's TLS keys and their variables: certificate, private key, CA.
const TLS_KEYS: [(&str, &str); 3] = [
    ("peer_tls_cert", "LEASEHOLD_PEER_TLS_CERT"),
    ("peer_tls_key", "LEASEHOLD_PEER_TLS_KEY"),
    ("peer_tls_ca", "LEASEHOLD_PEER_TLS_CA"),
];

/// Reads `[cluster]`; `None` unless `cluster.etcd_endpoints` is given.
pub(super) fn validate_cluster(r: &mut Reader<'_>) -> Option<ClusterConfig> {
    let on = r.given(SECTION, "etcd_endpoints", ENDPOINTS_ENV).is_some();
    let mut given = Vec::new();
    let mut note = |r: &Reader<'_>, key: &str, env: &'static str| {
        if let Some(path) = r.given(SECTION, key, env) {
            given.push(path);
        }
    };
    note(r, "prefix", "LEASEHOLD_CLUSTER_PREFIX");
    note(r, "node_name", "LEASEHOLD_NODE_NAME");
    note(r, "advertise_url", "LEASEHOLD_ADVERTISE_URL");
    note(r, "election_ttl_ms", "LEASEHOLD_ELECTION_TTL_MS");
    note(r, "etcd_timeout_ms", "LEASEHOLD_ETCD_TIMEOUT_MS");
    note(r, "peer_listen", "LEASEHOLD_PEER_LISTEN");
    note(r, "peer_advertise", "LEASEHOLD_PEER_ADVERTISE");
    note(r, "secret", "LEASEHOLD_CLUSTER_SECRET");
    for (key, env) in TLS_KEYS {
        note(r, key, env);
    }
    note(r, "snapshot_every_batches", "LEASEHOLD_SNAPSHOT_EVERY_BATCHES");

    let etcd_endpoints = endpoints(r);
    let prefix = match r.string(SECTION, "prefix", "LEASEHOLD_CLUSTER_PREFIX") {
        None => DEFAULT_CLUSTER_PREFIX.to_string(),
        Some((path, prefix)) => {
            if let Err(why) = check_prefix(&prefix) {
                r.invalid(path, why);
            }
            prefix
        }
    };
    let node_name = match r.string(SECTION, "node_name", "LEASEHOLD_NODE_NAME") {
        None => {
            if on {
                r.invalid("cluster.node_name", "is required in cluster mode (when cluster.etcd_endpoints is set)");
            }
            String::new()
        }
        Some((path, name)) => {
            if let Err(why) = check_node_name(&name) {
                r.invalid(path, why);
            }
            name
        }
    };
    let advertise_url = match r.string(SECTION, "advertise_url", "LEASEHOLD_ADVERTISE_URL") {
        None => {
            if on {
                r.invalid(
                    "cluster.advertise_url",
                    "is required in cluster mode (when cluster.etcd_endpoints is set): the URL clients reach this node's API at",
                );
            }
            String::new()
        }
        Some((path, text)) => match origin(&text, "http://10.0.0.1:8080") {
            Ok(url) if url_host_is_unspecified(&url) => {
                r.invalid(path, format!("{text:?} is an unspecified address; clients cannot reach it"));
                url
            }
            Ok(url) => url,
            Err(why) => {
                r.invalid(path, why);
                String::new()
            }
        },
    };
    let election_ttl_ms = r.int(
        SECTION,
        "election_ttl_ms",
        "LEASEHOLD_ELECTION_TTL_MS",
        DEFAULT_ELECTION_TTL_MS,
        MIN_ELECTION_TTL_MS,
        60_000,
    );
    if election_ttl_ms % 1_000 != 0 {
        r.invalid(
            "cluster.election_ttl_ms",
            format!("({election_ttl_ms}) must be a multiple of 1000: etcd grants leases in whole seconds"),
        );
    }
    let etcd_timeout_ms =
        r.int(SECTION, "etcd_timeout_ms", "LEASEHOLD_ETCD_TIMEOUT_MS", DEFAULT_ETCD_TIMEOUT_MS, 100, 60_000);
    if etcd_timeout_ms >= election_ttl_ms {
        r.invalid(
            "cluster.etcd_timeout_ms",
            format!(
                "({etcd_timeout_ms}) must be below cluster.election_ttl_ms ({election_ttl_ms}): a leader must hear from etcd well within its lease"
            ),
        );
    }

    let snapshot_every_batches = r.int(
        SECTION,
        "snapshot_every_batches",
        "LEASEHOLD_SNAPSHOT_EVERY_BATCHES",
        DEFAULT_SNAPSHOT_EVERY_BATCHES,
        10,
        100_000_000,
    );
    let peer = peer(r);

    if !on {
        for path in given {
            r.invalid(
                path,
                "is set but cluster.etcd_endpoints is not: [cluster] keys apply only in cluster mode; set cluster.etcd_endpoints as well, or remove this one",
            );
        }
        return None;
    }
    Some(ClusterConfig {
        etcd_endpoints,
        prefix,
        node_name,
        advertise_url,
        election_ttl_ms,
        etcd_timeout_ms,
        peer,
        snapshot_every_batches,
    })
}

/// The peer link's keys: none, or `peer_listen` with a `secret` (and `peer_advertise` unless
/// the listening address is one others can reach), and the three TLS files or none.
fn peer(r: &mut Reader<'_>) -> Option<PeerConfig> {
    let listen = r.string(SECTION, "peer_listen", "LEASEHOLD_PEER_LISTEN");
    let advertise = r.string(SECTION, "peer_advertise", "LEASEHOLD_PEER_ADVERTISE");
    let secret = r.string(SECTION, "secret", "LEASEHOLD_CLUSTER_SECRET");
    let [cert, key, ca] = TLS_KEYS.map(|(key, env)| r.string(SECTION, key, env));
    let Some((listen_path, listen_text)) = listen else {
        for (path, _) in [advertise, secret, cert, key, ca].into_iter().flatten() {
            r.invalid(
                path,
                "is set but cluster.peer_listen is not: it belongs to the peer link, which needs peer_listen",
            );
        }
        return None;
    };
    let listen = match listen_text.parse::<std::net::SocketAddr>() {
        Ok(addr) => Some(addr),
        Err(_) => {
            r.invalid(listen_path.clone(), format!("{listen_text:?} is not an address like 10.0.0.11:7070"));
            None
        }
    };
    let advertise = match advertise {
        Some((path, text)) => match check_peer_address(&text) {
            Ok(()) => Some(text),
            Err(why) => {
                r.invalid(path, why);
                None
            }
        },
        None => match listen {
            Some(addr) if addr.ip().is_unspecified() => {
                r.invalid(
                    "cluster.peer_advertise",
                    format!("is required when cluster.peer_listen ({addr}) is an unspecified address: where other nodes reach this one"),
                );
                None
            }
            addr => addr.map(|a| a.to_string()),
        },
    };
    let secret = match secret {
        None => {
            r.invalid(
                "cluster.secret",
                "is required with cluster.peer_listen: every node presents it on the peer link",
            );
            None
        }
        Some((path, text)) if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&text.len()) => {
            r.invalid(
                path,
                format!("must be {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes long (it is {})", text.len()),
            );
            None
        }
        Some((path, text)) if text.chars().any(char::is_control) => {
            r.invalid(path, "must not contain control characters");
            None
        }
        Some((_, text)) => Some(text),
    };
    let tls = tls_files(r, [cert, key, ca]);
    Some(PeerConfig { listen: listen?, advertise: advertise?, secret: secret?, tls: tls? })
}

/// The TLS files (certificate, key, CA, each as [`Reader::string`] returned it): `Some(None)`
/// when none is given, `None` after a problem.
fn tls_files(r: &mut Reader<'_>, given: [Option<(String, String)>; 3]) -> Option<Option<PeerTlsFiles>> {
    if given.iter().all(Option::is_none) {
        return Some(None);
    }
    let mut files = Vec::with_capacity(3);
    for (value, (key, env)) in given.into_iter().zip(TLS_KEYS) {
        match value {
            // Given, of the wrong type: reported already.
            None if r.given(SECTION, key, env).is_some() => {}
            None => r.invalid(
                format!("{SECTION}.{key}"),
                "is required with the other peer_tls_* keys: the peer link's TLS needs a certificate, its key and the CA (all three, or none for plain TCP)",
            ),
            Some((path, text)) if text.trim().is_empty() => r.invalid(path, "must name a PEM file"),
            Some((path, text)) if text.chars().any(char::is_control) => {
                r.invalid(path, "must not contain control characters")
            }
            Some((setting, text)) => files.push(TlsFile { path: text.into(), setting }),
        }
    }
    let [cert, key, ca]: [TlsFile; 3] = files.try_into().ok()?;
    Some(Some(PeerTlsFiles { cert, key, ca }))
}

/// A peer address other nodes can dial: `host:port`, with a host and a port from 1.
fn check_peer_address(text: &str) -> Result<(), String> {
    let bad = || format!("{text:?} is not an address like 10.0.0.11:7070 or node-a.internal:7070");
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control() || c == '/' || c == '@') {
        return Err(bad());
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(bad()),
    }
    if host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_unspecified()) {
        return Err(format!("{text:?} is an unspecified address; other nodes cannot reach it"));
    }
    Ok(())
}

/// `cluster.etcd_endpoints`: 1 to 16 distinct origins.
fn endpoints(r: &mut Reader<'_>) -> Vec<String> {
    let Some((path, items)) = r.strings(SECTION, "etcd_endpoints", ENDPOINTS_ENV) else { return Vec::new() };
    if items.is_empty() {
        r.invalid(path.clone(), "must list at least one etcd endpoint, like http://10.0.0.1:2379");
    }
    if items.len() > MAX_ETCD_ENDPOINTS {
        r.invalid(path.clone(), format!("lists {} endpoints; at most {MAX_ETCD_ENDPOINTS} are allowed", items.len()));
    }
    let mut list: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        match origin(&item, "http://10.0.0.1:2379") {
            Ok(url) if url.starts_with("https:") => r.invalid(
                path.clone(),
                format!("{url}: https:// needs TLS to etcd, which this build does not speak yet; use http:// (etcd on a private network) for now"),
            ),
            Ok(url) if list.contains(&url) => r.invalid(path.clone(), format!("lists {url} twice")),
            Ok(url) => list.push(url),
            Err(why) => r.invalid(path.clone(), why),
        }
    }
    list
}

/// An `http://host:port` or `https://host:port` URL, with nothing else (a lone `/` path is
/// allowed), normalised to `scheme://host:port`. The port must be written out: etcd has no
/// usual port in the URLs people write, and a default port taken silently hides a mistake.
fn origin(text: &str, example: &str) -> Result<String, String> {
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{text:?} must not contain spaces or control characters"));
    }
    let Some((_, rest)) = text.split_once("://") else {
        return Err(format!("{text:?} is not a URL like {example}"));
    };
    let url = url::Url::parse(text).map_err(|_| format!("{text:?} is not a URL like {example}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{text:?} must start with http:// or https://"));
    }
    let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
        return Err(format!("{text:?} has no host; write it like {example}"));
    };
    // The part between `://` and the path, as written (the parser treats `\` as `/`).
    let authority = rest.split(['/', '\\', '?', '#']).next().unwrap_or("");
    if !url.username().is_empty() || url.password().is_some() || authority.contains('@') {
        return Err(format!("{text:?} must not carry a user name or password"));
    }
    // The parser forgets a port equal to the scheme's default, so look at the text too.
    let port_written = authority.rsplit_once(':').is_some_and(|(before, port)| {
        !before.is_empty() && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
    });
    let Some(port) = url.port_or_known_default().filter(|_| port_written) else {
        return Err(format!("{text:?} must give a port, like {example}"));
    };
    if url.path() != "/" {
        return Err(format!("{text:?} must not have a path (only scheme, host and port)"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{text:?} must not have a query or a fragment"));
    }
    Ok(format!("{}://{host}:{port}", url.scheme()))
}

/// Whether a normalised origin's host is `0.0.0.0` or `[::]`, which no client can reach.
fn url_host_is_unspecified(origin: &str) -> bool {
    match url::Url::parse(origin).ok().as_ref().and_then(url::Url::host) {
        Some(url::Host::Ipv4(ip)) => ip.is_unspecified(),
        Some(url::Host::Ipv6(ip)) => ip.is_unspecified(),
        _ => false,
    }
}

fn check_prefix(prefix: &str) -> Result<(), String> {
    if !prefix.starts_with('/') {
        Err(format!("{prefix:?} must start with /"))
    } else if prefix.ends_with('/') {
        Err(format!("{prefix:?} must not end with / (leasehold adds its own)"))
    } else if !prefix.bytes().all(|b| b.is_ascii_graphic()) {
        Err(format!("{prefix:?} must be printable ASCII without spaces"))
    } else if prefix.len() > MAX_CLUSTER_PREFIX_BYTES {
        Err(format!("is {} bytes long; at most {MAX_CLUSTER_PREFIX_BYTES} are allowed", prefix.len()))
    } else {
        Ok(())
    }
}

fn check_node_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NODE_NAME_CHARS
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} must be 1 to {MAX_NODE_NAME_CHARS} letters, digits, '.', '_' or '-' (and unique in the cluster)"
        ))
    }
}
