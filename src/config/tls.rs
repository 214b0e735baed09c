//! `[tls]`: TLS on the HTTP port (docs/operations.md, "TLS"). The addresses in `tls.listen`
//! are listeners of their own beside `server.listen` (as nginx's `listen 8443 ssl;` beside
//! `listen 8080;`): each speaks TLS 1.2 or 1.3 with `tls.cert_file` and `tls.key_file`;
//! `server.listen` stays plain HTTP. With `tls.client_ca_file`, clients present a
//! certificate from that CA, and `[[tls.clients]]` maps a certificate's subject common name
//! to a role and a name prefix, as `[[auth.keys]]` does for a key.
//!
//! Pure: the PEM files are read and checked by `process::tls` (for `check-config` too), never
//! here.

use std::net::SocketAddr;

use super::read::Reader;
use super::{role_and_prefix, Role, TlsFile};

const SECTION: &str = "tls";

/// Most `[[tls.clients]]` entries.
pub const MAX_TLS_CLIENTS: usize = 10_000;

/// Whether a TLS client must present a certificate (`tls.client_auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// A handshake without a certificate from `tls.client_ca_file` fails.
    Required,
    /// A client may present none (and is then judged by its API key); one it presents must
    /// still chain to the CA.
    Optional,
}

/// One `[[tls.clients]]` entry: what a client whose certificate has this subject common
/// name may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsClient {
    /// The certificate's subject CN, exactly.
    pub subject_cn: String,
    /// What it may do.
    pub role: Role,
    /// Lock names it may touch must start with this (empty: any).
    pub prefix: String,
}

/// The PEM files of the TLS listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTlsFiles {
    /// The server's certificate chain, its own certificate first.
    pub cert: TlsFile,
    /// Its private key.
    pub key: TlsFile,
    /// The CA clients' certificates must chain to (client-certificate auth), if any.
    pub client_ca: Option<TlsFile>,
}

/// `[tls]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// Addresses that speak TLS (empty: none, the default).
    pub listen: Vec<SocketAddr>,
    /// The files, when `listen` is not empty.
    pub files: Option<ListenerTlsFiles>,
    /// Whether a client certificate is required (only with `client_ca_file`).
    pub client_auth: ClientAuth,
    /// Certificate subjects and what they may do.
    pub clients: Vec<TlsClient>,
}

impl TlsConfig {
    /// Whether some TLS address is not a loopback address.
    pub fn listens_beyond_loopback(&self) -> bool {
        self.listen.iter().any(|a| !a.ip().is_loopback())
    }

    /// Whether every TLS client must present a certificate that maps to a role (so a TLS
    /// listener on a public address is not open to anyone).
    pub fn certificates_required(&self) -> bool {
        self.files.as_ref().is_some_and(|f| f.client_ca.is_some())
            && self.client_auth == ClientAuth::Required
            && !self.clients.is_empty()
    }
}

/// A file key: `Some` with its path, `None` when absent or after a problem.
fn file(r: &mut Reader<'_>, key: &str, env: &'static str) -> Option<TlsFile> {
    let (setting, text) = r.string(SECTION, key, env)?;
    if text.trim().is_empty() {
        r.invalid(setting, "must name a PEM file");
        return None;
    }
    if text.chars().any(char::is_control) {
        r.invalid(setting, "must not contain control characters");
        return None;
    }
    Some(TlsFile { path: text.into(), setting })
}

/// Reads `[tls]`; `server_listen` is `server.listen` (an address is in one list or the
/// other).
pub(super) fn validate_tls(r: &mut Reader<'_>, server_listen: &[SocketAddr]) -> TlsConfig {
    let mut listen = Vec::new();
    // Addresses were given (even bad ones, reported already): the files are for them.
    let mut listening = false;
    if let Some((path, items)) = r.strings(SECTION, "listen", "LEASEHOLD_TLS_LISTEN") {
        listening = !items.is_empty();
        for item in items {
            match item.parse::<SocketAddr>() {
                // Port 0 (a free port, chosen at bind) is never the same address twice.
                Ok(addr) if addr.port() != 0 && listen.contains(&addr) => {
                    r.invalid(path.clone(), format!("lists {item} twice"))
                }
                Ok(addr) if addr.port() != 0 && server_listen.contains(&addr) => r.invalid(
                    path.clone(),
                    format!("lists {item}, which server.listen lists too: one address speaks plain HTTP or TLS"),
                ),
                Ok(addr) => listen.push(addr),
                Err(_) => r.invalid(path.clone(), format!("{item:?} is not an address like 0.0.0.0:8443 or [::]:8443")),
            }
        }
    }
    let cert = file(r, "cert_file", "LEASEHOLD_TLS_CERT_FILE");
    let key = file(r, "key_file", "LEASEHOLD_TLS_KEY_FILE");
    let client_ca = file(r, "client_ca_file", "LEASEHOLD_TLS_CLIENT_CA_FILE");
    let auth_given = r.given(SECTION, "client_auth", "LEASEHOLD_TLS_CLIENT_AUTH");
    let client_auth = [ClientAuth::Required, ClientAuth::Optional]
        [r.choice(SECTION, "client_auth", "LEASEHOLD_TLS_CLIENT_AUTH", &["required", "optional"], 0)];
    let clients = validate_clients(r);

    let given = |r: &Reader<'_>, key: &str, env: &'static str| r.given(SECTION, key, env).is_some();
    if listening {
        for (value, key, env) in
            [(&cert, "cert_file", "LEASEHOLD_TLS_CERT_FILE"), (&key, "key_file", "LEASEHOLD_TLS_KEY_FILE")]
        {
            if value.is_none() && !given(r, key, env) {
                r.invalid(
                    format!("tls.{key}"),
                    "is required with tls.listen: a TLS listener needs a certificate and its key",
                );
            }
        }
    } else {
        // Files without a listener would be checked and never used: say so.
        for (key, env) in [
            ("cert_file", "LEASEHOLD_TLS_CERT_FILE"),
            ("key_file", "LEASEHOLD_TLS_KEY_FILE"),
            ("client_ca_file", "LEASEHOLD_TLS_CLIENT_CA_FILE"),
        ] {
            if let Some(path) = r.given(SECTION, key, env) {
                r.invalid(path, "is set but tls.listen names no address: no listener would use it");
            }
        }
    }
    if client_ca.is_none() && !given(r, "client_ca_file", "LEASEHOLD_TLS_CLIENT_CA_FILE") {
        if let Some(path) = auth_given {
            r.invalid(path, "needs tls.client_ca_file: client certificates are checked against that CA");
        }
        if !clients.is_empty() {
            r.invalid("tls.clients", "needs tls.client_ca_file: client certificates are checked against that CA");
        }
    }
    let files = match (listening, cert, key) {
        (true, Some(cert), Some(key)) => Some(ListenerTlsFiles { cert, key, client_ca }),
        _ => None,
    };
    TlsConfig { listen, files, client_auth, clients }
}

/// `[[tls.clients]]`.
fn validate_clients(r: &mut Reader<'_>) -> Vec<TlsClient> {
    let mut clients: Vec<TlsClient> = Vec::new();
    let tables = r.tables(SECTION, "clients");
    if tables.len() > MAX_TLS_CLIENTS {
        r.invalid("tls.clients", format!("has {} entries; at most {MAX_TLS_CLIENTS}", tables.len()));
        return clients;
    }
    for (path, table) in tables {
        for field in table.keys() {
            if !["subject_cn", "role", "prefix"].contains(&field.as_str()) {
                r.invalid(format!("{path}.{field}"), "unknown key (a client has subject_cn, role and prefix)");
            }
        }
        let subject_cn = match r.entry_string(&path, table, "subject_cn") {
            Some(cn) if !cn.is_empty() && !cn.chars().any(char::is_control) => cn,
            Some(_) => {
                r.invalid(format!("{path}.subject_cn"), "must be a non-empty name without control characters");
                continue;
            }
            None => {
                if !table.contains_key("subject_cn") {
                    r.invalid(format!("{path}.subject_cn"), "is required: the certificate subject's common name");
                }
                continue;
            }
        };
        if clients.iter().any(|c| c.subject_cn == subject_cn) {
            r.invalid(format!("{path}.subject_cn"), format!("{subject_cn:?} is mapped twice"));
            continue;
        }
        let Some((role, prefix)) = role_and_prefix(r, &path, table) else { continue };
        clients.push(TlsClient { subject_cn, role, prefix });
    }
    clients
}
