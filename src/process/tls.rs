//! The process's TLS configurations: the peer link's (docs/cluster.md, "The peer link") and
//! the HTTP listeners' (`[tls]`, docs/operations.md, "TLS"). Reads the PEM files they name,
//! checks them, and builds the rustls configurations. Moves no bytes: the keeper's loop drives
//! the peer link's sessions through `process::channel`, a snapshot transfer goes through
//! `process::fetch`, and a worker drives its clients' sessions in `worker/transport.rs`.
//! Both use rustls' `ring` provider (the one ureq builds already), and the same PEM reading
//! and checks, each problem naming its key (so `check-config` reports them too).
//!
//! The peer link ([`PeerTls`]):
//! - **TLS 1.3 only**.
//! - **Mutual.** The accepting node requires a client certificate that chains to the CA;
//!   the connecting node checks the accepting node's certificate against the same CA, for
//!   the host of the address it dials (the leader's `peer_advertise`; an IP address is
//!   matched as an IP SAN). So each node's certificate needs its `peer_advertise` host as
//!   a name, and both the serverAuth and clientAuth usages (or no usage extension at all).
//! - **No resumption**: no tickets are issued or kept; every connection is a full
//!   handshake (peer connections are few and long-lived).
//! - **Checked when loaded** ([`PeerTls::load`], so by `check-config` too): each file is
//!   read and parsed, the key must match the certificate, and the node's own certificate
//!   must pass the checks the other nodes will make of it, each problem naming its key.
//!
//! The HTTP listeners ([`ListenerTls`]):
//! - **TLS 1.2 and 1.3**, with the provider's default cipher suites: ECDHE key exchange
//!   with AES-GCM or ChaCha20-Poly1305 only (no RC4, 3DES, CBC or static RSA suite exists in
//!   rustls at all). ALPN offers `http/1.1`.
//! - **Client certificates** with `tls.client_ca_file`: required or optional
//!   (`tls.client_auth`); one that does not chain to the CA fails the handshake.
//! - **Checked when loaded** ([`ListenerTls::load`]: by the master at start and on every
//!   reload, so a bad new certificate refuses the reload; by `check-config`; by each worker
//!   as it starts, which is how a reload brings new certificates to new connections).

use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::config::{ClientAuth, ConfigError, ListenerTlsFiles, PeerTlsFiles, TlsFile};

/// A node's TLS configurations for the peer link, both sides (cheap to clone).
#[derive(Debug, Clone)]
pub struct PeerTls {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

/// The PEM contents of the three files, and the keys that name them in problems.
struct Pem<'a> {
    cert: (&'a [u8], &'a str),
    key: (&'a [u8], &'a str),
    ca: (&'a [u8], &'a str),
}

impl PeerTls {
    /// Reads and checks the files of a node that other nodes reach at `advertise`
    /// (`host:port`). Each problem names its key: every file that cannot be read or
    /// parsed, else the first check that fails.
    pub fn load(files: &PeerTlsFiles, advertise: &str) -> Result<Self, Vec<ConfigError>> {
        let mut problems = Vec::new();
        let mut read = |file: &TlsFile| read_pem(file).map_err(|p| problems.push(p)).ok();
        let (cert, key, ca) = (read(&files.cert), read(&files.key), read(&files.ca));
        let (Some(cert), Some(key), Some(ca)) = (cert, key, ca) else { return Err(problems) };
        let pem =
            Pem { cert: (&cert, &files.cert.setting), key: (&key, &files.key.setting), ca: (&ca, &files.ca.setting) };
        Self::from_pem(&pem, Some(advertise))
    }

    /// The configurations from PEM text: a certificate chain (the node's own first), its
    /// private key and the CA's certificates, for a node reached at `advertise` (its
    /// certificate is checked as the other nodes will check it; not with `None`, which only
    /// tests use, to make a node the others refuse).
    fn from_pem(pem: &Pem<'_>, advertise: Option<&str>) -> Result<Self, Vec<ConfigError>> {
        let mut problems = Vec::new();
        let chain = certificates(pem.cert, "this node's certificate").map_err(|p| problems.push(p)).ok();
        let key = private_key(pem.key).map_err(|p| problems.push(p)).ok();
        let roots = roots(pem.ca).map_err(|p| problems.push(p)).ok();
        let (Some(chain), Some(key), Some(roots)) = (chain, key, roots) else { return Err(problems) };

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
        let unusable = |e: String| vec![invalid(pem.ca.1, format!("cannot be used: {e}"))];
        let client_verifier = WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
            .build()
            .map_err(|e| unusable(e.to_string()))?;
        let server_verifier = WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(&provider))
            .build()
            .map_err(|e| unusable(e.to_string()))?;

        // The checks the other nodes will make of this node's certificate, made now.
        if let Some(advertise) = advertise {
            let name = server_name(advertise).map_err(|why| vec![invalid(pem.cert.1, why)])?;
            let now = UnixTime::now();
            let (own, intermediates) = chain.split_first().expect("certificates() returns at least one");
            let refused = |side: &str, e: rustls::Error| {
                use rustls::CertificateError as Why;
                let hint = match &e {
                    rustls::Error::InvalidCertificate(Why::UnknownIssuer | Why::BadSignature) => {
                        " (it must chain to cluster.peer_tls_ca)"
                    }
                    rustls::Error::InvalidCertificate(Why::NotValidForName | Why::NotValidForNameContext { .. }) => {
                        " (it must name the host of cluster.peer_advertise)"
                    }
                    rustls::Error::InvalidCertificate(Why::InvalidPurpose | Why::InvalidPurposeContext { .. }) => {
                        " (it must allow both server and client use)"
                    }
                    _ => "",
                };
                vec![invalid(pem.cert.1, format!("would be refused by the other nodes {side}: {e}{hint}"))]
            };
            server_verifier
                .verify_server_cert(own, intermediates, &name, &[], now)
                .map_err(|e| refused(&format!("when they connect to {advertise} (cluster.peer_advertise)"), e))?;
            client_verifier
                .verify_client_cert(own, intermediates, now)
                .map_err(|e| refused("when this node connects to them", e))?;
        }

        let mismatch = |e: rustls::Error| match e {
            rustls::Error::InconsistentKeys(_) => {
                vec![invalid(pem.key.1, format!("does not match the certificate in {}", pem.cert.1))]
            }
            other => vec![invalid(pem.key.1, format!("cannot be used: {other}"))],
        };
        let mut server = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(tls13)
            .map_err(|e| unusable(e.to_string()))?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(mismatch)?;
        server.send_tls13_tickets = 0;
        server.session_storage = Arc::new(NoServerSessionStorage {});
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(tls13)
            .map_err(|e| unusable(e.to_string()))?
            .with_webpki_verifier(server_verifier)
            .with_client_auth_cert(chain, key)
            .map_err(mismatch)?;
        client.resumption = Resumption::disabled();
        Ok(Self { server: Arc::new(server), client: Arc::new(client) })
    }

    /// A session for a connection another node opened.
    pub fn accept(&self) -> Result<ServerConnection, rustls::Error> {
        ServerConnection::new(Arc::clone(&self.server))
    }

    /// A session for a connection to the node at `peer` (`host:port`, as it advertises its
    /// peer link), which must present a certificate for that host.
    pub fn connect(&self, peer: &str) -> std::io::Result<ClientConnection> {
        let name = server_name(peer).map_err(|why| std::io::Error::new(std::io::ErrorKind::InvalidInput, why))?;
        ClientConnection::new(Arc::clone(&self.client), name).map_err(std::io::Error::other)
    }
}

/// The HTTP listeners' TLS configuration (cheap to clone).
#[derive(Debug, Clone)]
pub struct ListenerTls {
    server: Arc<ServerConfig>,
}

impl ListenerTls {
    /// Reads and checks `[tls]`'s files. Each problem names its key: every file that cannot
    /// be read or parsed, else the first check that fails.
    pub fn load(files: &ListenerTlsFiles, client_auth: ClientAuth) -> Result<Self, Vec<ConfigError>> {
        let mut problems = Vec::new();
        let mut read = |file: &TlsFile| read_pem(file).map_err(|p| problems.push(p)).ok();
        let (cert, key) = (read(&files.cert), read(&files.key));
        let ca = files.client_ca.as_ref().map(&mut read);
        let (Some(cert), Some(key)) = (cert, key) else { return Err(problems) };
        let ca = match (ca, &files.client_ca) {
            (None, _) => None,
            (Some(Some(bytes)), Some(file)) => Some((bytes, file.setting.as_str())),
            _ => return Err(problems),
        };
        Self::from_pem(
            (&cert, &files.cert.setting),
            (&key, &files.key.setting),
            ca.as_ref().map(|(bytes, setting)| (bytes.as_slice(), *setting)),
            client_auth,
        )
    }

    /// The configuration from PEM text: the server's chain, its key, and the clients' CA.
    fn from_pem(
        cert: (&[u8], &str),
        key: (&[u8], &str),
        ca: Option<(&[u8], &str)>,
        client_auth: ClientAuth,
    ) -> Result<Self, Vec<ConfigError>> {
        let mut problems = Vec::new();
        let chain = certificates(cert, "the server's certificate").map_err(|p| problems.push(p)).ok();
        let private = private_key(key).map_err(|p| problems.push(p)).ok();
        let roots = ca.map(|ca| roots(ca).map_err(|p| problems.push(p)).ok());
        let (Some(chain), Some(private)) = (chain, private) else { return Err(problems) };
        if !problems.is_empty() {
            return Err(problems);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12, &rustls::version::TLS13];
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(versions)
            .map_err(|e| vec![invalid(cert.1, format!("cannot be used: {e}"))])?;
        let builder = match (roots.flatten(), ca) {
            (Some(roots), Some((_, ca_key))) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider);
                let verifier = match client_auth {
                    ClientAuth::Required => verifier,
                    ClientAuth::Optional => verifier.allow_unauthenticated(),
                };
                let verifier = verifier.build().map_err(|e| vec![invalid(ca_key, format!("cannot be used: {e}"))])?;
                builder.with_client_cert_verifier(verifier)
            }
            _ => builder.with_no_client_auth(),
        };
        let mut server = builder.with_single_cert(chain, private).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => {
                vec![invalid(key.1, format!("does not match the certificate in {}", cert.1))]
            }
            other => vec![invalid(key.1, format!("cannot be used: {other}"))],
        })?;
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self { server: Arc::new(server) })
    }

    /// A session for a connection a client opened on a TLS listener.
    pub fn accept(&self) -> Result<ServerConnection, rustls::Error> {
        ServerConnection::new(Arc::clone(&self.server))
    }
}

/// The CA certificates of a PEM text, as trust roots.
fn roots(ca: (&[u8], &str)) -> Result<Arc<RootCertStore>, ConfigError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(ca, "the CA's certificate")? {
        roots.add(cert).map_err(|e| invalid(ca.1, format!("holds a certificate that cannot be a CA: {e}")))?;
    }
    Ok(Arc::new(roots))
}

/// The name a node reached at `peer` (`host:port`, `[v6]:port`) must have: its host, a
/// DNS name or an IP address.
pub fn server_name(peer: &str) -> Result<ServerName<'static>, String> {
    let host = peer.rsplit_once(':').map_or(peer, |(host, _)| host);
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    ServerName::try_from(host.to_string())
        .map_err(|_| format!("{peer:?}: its host is neither a DNS name nor an IP address a certificate can name"))
}

/// The bytes of a PEM file, or the problem naming its key.
fn read_pem(file: &TlsFile) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(&file.path).map_err(|e| invalid(&file.setting, format!("cannot read {}: {e}", file.path.display())))
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.to_string(), reason: reason.into() }
}

/// Every certificate in a PEM text, at least one.
fn certificates((pem, key): (&[u8], &str), what: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(key, format!("is not a readable PEM file: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(key, format!("holds no certificate (a BEGIN CERTIFICATE block): {what} is expected")));
    }
    Ok(certs)
}

/// The private key in a PEM text (PKCS#8, PKCS#1 or SEC1).
fn private_key((pem, key): (&[u8], &str)) -> Result<PrivateKeyDer<'static>, ConfigError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            invalid(key, "holds no private key (a BEGIN PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block)")
        }
        other => invalid(key, format!("is not a readable PEM file: {other}")),
    })
}

/// Certificates for tests: a CA and node certificates it signs, as PEM text or files.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::Path;

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };

    use super::*;

    /// A CA that signs node certificates.
    pub(crate) struct Authority {
        issuer: Issuer<'static, KeyPair>,
        /// Its certificate, PEM.
        pub(crate) pem: String,
    }

    /// A node's certificate and key, PEM.
    pub(crate) struct NodeCert {
        pub(crate) cert: String,
        pub(crate) key: String,
    }

    impl Authority {
        pub(crate) fn new(name: &str) -> Self {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
            let key = KeyPair::generate().unwrap();
            let pem = params.self_signed(&key).unwrap().pem();
            Self { issuer: Issuer::new(params, key), pem }
        }

        /// A node certificate with `names` (DNS names or IP addresses) as its SANs.
        pub(crate) fn node(&self, names: &[&str]) -> NodeCert {
            self.node_for(names, vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth])
        }

        /// The same with only `usages` as its extended key usages.
        pub(crate) fn node_for(&self, names: &[&str], usages: Vec<ExtendedKeyUsagePurpose>) -> NodeCert {
            let mut params = CertificateParams::new(names.iter().map(ToString::to_string).collect::<Vec<_>>()).unwrap();
            params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("node"));
            params.extended_key_usages = usages;
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.issuer).unwrap().pem();
            NodeCert { cert, key: key.serialize_pem() }
        }

        /// The configurations of a node on 127.0.0.1 with a certificate from this CA.
        pub(crate) fn tls(&self) -> PeerTls {
            from_pem(&self.node(&["127.0.0.1"]), &self.pem, "127.0.0.1:7070").unwrap()
        }

        /// The configurations of a node on 127.0.0.1 that trusts this CA but has a
        /// certificate from `signer` (which the load would refuse: not checked).
        pub(crate) fn tls_signed_by(&self, signer: &Authority) -> PeerTls {
            PeerTls::from_pem(&pem(&signer.node(&["127.0.0.1"]), &self.pem), None).unwrap()
        }
    }

    fn pem<'a>(node: &'a NodeCert, ca: &'a str) -> Pem<'a> {
        Pem {
            cert: (node.cert.as_bytes(), "cluster.peer_tls_cert"),
            key: (node.key.as_bytes(), "cluster.peer_tls_key"),
            ca: (ca.as_bytes(), "cluster.peer_tls_ca"),
        }
    }

    /// [`PeerTls::from_pem`] with the keys' names, for a node reached at `advertise`.
    pub(crate) fn from_pem(node: &NodeCert, ca: &str, advertise: &str) -> Result<PeerTls, Vec<ConfigError>> {
        PeerTls::from_pem(&pem(node, ca), Some(advertise))
    }

    /// Writes the three files in `dir` and names them as the configuration would.
    pub(crate) fn write_files(dir: &Path, node: &NodeCert, ca: &str) -> PeerTlsFiles {
        let file = |name: &str, text: &str, key: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            TlsFile { path, setting: format!("cluster.{key}") }
        };
        PeerTlsFiles {
            cert: file("node.pem", &node.cert, "peer_tls_cert"),
            key: file("node.key", &node.key, "peer_tls_key"),
            ca: file("ca.pem", ca, "peer_tls_ca"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{from_pem, write_files, Authority};
    use super::*;

    const HERE: &str = "127.0.0.1:7070";

    /// The problems, as `check-config` prints them.
    fn problems(result: Result<PeerTls, Vec<ConfigError>>) -> String {
        match result {
            Ok(_) => panic!("accepted"),
            Err(problems) => problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"),
        }
    }

    #[test]
    fn load_of_good_files_builds_both_sides() {
        let (dir, ca) = (tempfile::tempdir().unwrap(), Authority::new("ca"));
        let files = write_files(dir.path(), &ca.node(&["127.0.0.1"]), &ca.pem);
        let tls = PeerTls::load(&files, HERE).unwrap();
        assert!(tls.accept().is_ok());
        assert!(tls.connect(HERE).is_ok());
        assert!(tls.connect("node-b.internal:7070").is_ok(), "a DNS name is a server name too");
    }

    #[test]
    fn load_of_a_missing_file_names_each_key() {
        let (dir, ca) = (tempfile::tempdir().unwrap(), Authority::new("ca"));
        let mut files = write_files(dir.path(), &ca.node(&["127.0.0.1"]), &ca.pem);
        files.key.path = dir.path().join("gone.key");
        files.ca.path = dir.path().join("gone.pem");
        let text = problems(PeerTls::load(&files, HERE));
        assert!(text.contains("cluster.peer_tls_key: cannot read") && text.contains("gone.key"), "{text}");
        assert!(text.contains("cluster.peer_tls_ca: cannot read"), "{text}");
        assert!(!text.contains("peer_tls_cert"), "{text}");
    }

    #[test]
    fn load_without_a_certificate_or_a_key_says_which_file() {
        let ca = Authority::new("ca");
        let node = ca.node(&["127.0.0.1"]);
        let swapped = testing::NodeCert { cert: node.key.clone(), key: node.cert.clone() };
        let text = problems(from_pem(&swapped, &ca.pem, HERE));
        assert!(text.contains("cluster.peer_tls_cert: holds no certificate"), "{text}");
        assert!(text.contains("cluster.peer_tls_key: holds no private key"), "{text}");
        let text = problems(from_pem(&node, "not a PEM file", HERE));
        assert!(text.contains("cluster.peer_tls_ca: holds no certificate"), "{text}");
    }

    #[test]
    fn load_of_a_key_that_is_not_the_certificate_s_is_refused() {
        let ca = Authority::new("ca");
        let (node, other) = (ca.node(&["127.0.0.1"]), ca.node(&["127.0.0.1"]));
        let mixed = testing::NodeCert { cert: node.cert, key: other.key };
        let text = problems(from_pem(&mixed, &ca.pem, HERE));
        assert!(
            text.contains("cluster.peer_tls_key: does not match the certificate in cluster.peer_tls_cert"),
            "{text}"
        );
    }

    #[test]
    fn load_of_a_certificate_the_others_would_refuse_says_why() {
        let (ca, other) = (Authority::new("ca"), Authority::new("another ca"));
        let text = problems(from_pem(&other.node(&["127.0.0.1"]), &ca.pem, HERE));
        assert!(text.contains("cluster.peer_tls_cert: would be refused"), "{text}");
        assert!(text.contains("UnknownIssuer (it must chain to cluster.peer_tls_ca)"), "{text}");
        // An IP address is matched as an IP SAN: another address is another name.
        let text = problems(from_pem(&ca.node(&["10.0.0.12"]), &ca.pem, "10.0.0.11:7070"));
        assert!(text.contains("10.0.0.11:7070 (cluster.peer_advertise)"), "{text}");
        let text = problems(from_pem(&ca.node(&["node-a.internal"]), &ca.pem, "node-b.internal:7070"));
        assert!(text.contains("cluster.peer_tls_cert: would be refused"), "{text}");
        assert!(text.contains("(it must name the host of cluster.peer_advertise)"), "{text}");
        assert!(from_pem(&ca.node(&["node-a.internal"]), &ca.pem, "node-a.internal:7070").is_ok());
        let server_only = ca.node_for(&["127.0.0.1"], vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth]);
        let text = problems(from_pem(&server_only, &ca.pem, HERE));
        assert!(text.contains("when this node connects to them"), "{text}");
        assert!(text.contains("(it must allow both server and client use)"), "{text}");
    }

    #[test]
    fn server_name_is_the_host_of_the_address() {
        assert_eq!(server_name("10.0.0.11:7070").unwrap(), ServerName::try_from("10.0.0.11").unwrap());
        assert_eq!(server_name("[::1]:7070").unwrap(), ServerName::try_from("::1").unwrap());
        assert!(matches!(server_name("[::1]:7070").unwrap(), ServerName::IpAddress(_)));
        assert!(matches!(server_name("node-a.internal:7070").unwrap(), ServerName::DnsName(_)));
        assert!(server_name("bad name:7070").is_err());
    }

    fn listener_problems(result: Result<ListenerTls, Vec<ConfigError>>) -> String {
        match result {
            Ok(_) => panic!("accepted"),
            Err(problems) => problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"),
        }
    }

    fn listener_files(dir: &std::path::Path, cert: &str, key: &str, ca: Option<&str>) -> ListenerTlsFiles {
        let file = |name: &str, text: &str, key: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            TlsFile { path, setting: format!("tls.{key}") }
        };
        ListenerTlsFiles {
            cert: file("cert.pem", cert, "cert_file"),
            key: file("key.pem", key, "key_file"),
            client_ca: ca.map(|ca| file("ca.pem", ca, "client_ca_file")),
        }
    }

    #[test]
    fn listener_load_checks_each_file_and_names_its_key() {
        let (dir, ca) = (tempfile::tempdir().unwrap(), Authority::new("ca"));
        let node = ca.node(&["127.0.0.1"]);
        let chain = format!("{}{}", node.cert, ca.pem);
        let files = listener_files(dir.path(), &chain, &node.key, None);
        assert!(ListenerTls::load(&files, ClientAuth::Required).unwrap().accept().is_ok(), "a chain is allowed");
        let files = listener_files(dir.path(), &node.cert, &node.key, Some(&ca.pem));
        assert!(ListenerTls::load(&files, ClientAuth::Optional).is_ok());

        let other = ca.node(&["127.0.0.1"]);
        let files = listener_files(dir.path(), &node.cert, &other.key, None);
        let text = listener_problems(ListenerTls::load(&files, ClientAuth::Required));
        assert!(text.contains("tls.key_file: does not match the certificate in tls.cert_file"), "{text}");
        let files = listener_files(dir.path(), &node.key, &node.cert, Some("not a CA"));
        let text = listener_problems(ListenerTls::load(&files, ClientAuth::Required));
        assert!(text.contains("tls.cert_file: holds no certificate"), "{text}");
        assert!(text.contains("tls.key_file: holds no private key"), "{text}");
        assert!(text.contains("tls.client_ca_file: holds no certificate"), "{text}");
        let mut files = listener_files(dir.path(), &node.cert, &node.key, None);
        files.cert.path = dir.path().join("gone.pem");
        let text = listener_problems(ListenerTls::load(&files, ClientAuth::Required));
        assert!(text.contains("tls.cert_file: cannot read") && text.contains("gone.pem"), "{text}");
    }
}
