//! Certificates made by the tests (rcgen): a CA of a test's own, and certificates it signs
//! for a server, a client or a cluster node. Nothing is read from the machine.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

/// A CA of the test's own.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    /// Its certificate, PEM.
    pub pem: String,
}

/// A certificate and its key, PEM.
pub struct Cert {
    /// The certificate.
    pub cert: String,
    /// Its private key.
    pub key: String,
}

impl Authority {
    /// A new CA named `name` (its subject's common name).
    pub fn new(name: &str) -> Authority {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Authority { issuer: Issuer::new(params, key), pem }
    }

    /// A certificate with subject CN `cn` and `sans` as its names (no usage extension: any
    /// use).
    pub fn issue(&self, cn: &str, sans: &[&str]) -> Cert {
        self.sign(cn, sans, Vec::new())
    }

    /// A cluster node's certificate for 127.0.0.1, for both server and client use.
    pub fn node(&self) -> Cert {
        let usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        self.sign("a leasehold node", &["127.0.0.1"], usages)
    }

    fn sign(&self, cn: &str, sans: &[&str], usages: Vec<ExtendedKeyUsagePurpose>) -> Cert {
        let mut params = CertificateParams::new(sans.iter().map(ToString::to_string).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = usages;
        let key = KeyPair::generate().unwrap();
        Cert { cert: params.signed_by(&key, &self.issuer).unwrap().pem(), key: key.serialize_pem() }
    }
}
