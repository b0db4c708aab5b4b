//! A test certificate authority for one SPIFFE trust domain, issuing X.509-SVIDs
//! (one URI SAN `spiffe://TD/ns/NS/sa/SA`, usable for both client and server auth).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// The CA: its certificate and key live only in memory (and its PEM on disk for Envoy).
pub struct TestCa {
    trust_domain: String,
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// An X.509-SVID: a leaf certificate and its private key, both PEM.
#[derive(Clone)]
pub struct X509Svid {
    /// The SPIFFE ID in the URI SAN.
    pub spiffe_id: String,
    /// The leaf certificate (PEM).
    pub cert_pem: String,
    /// The leaf's PKCS#8 private key (PEM).
    pub key_pem: String,
}

/// Where an SVID was written for Envoy to read.
#[derive(Clone, Debug)]
pub struct SvidFiles {
    /// Certificate chain file (leaf).
    pub cert: PathBuf,
    /// Private key file.
    pub key: PathBuf,
}

impl TestCa {
    /// A fresh CA (ECDSA P-256) for `trust_domain`, e.g. `cluster.local`.
    pub fn new(trust_domain: &str) -> Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            format!("meshpass e2e CA {trust_domain}"),
        );
        dn.push(DnType::OrganizationName, "meshpass e2e");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.subject_alt_names = vec![SanType::URI(
            format!("spiffe://{trust_domain}")
                .try_into()
                .context("trust domain is not a valid URI")?,
        )];
        let key = KeyPair::generate().context("cannot generate the CA key")?;
        let cert = params
            .self_signed(&key)
            .context("cannot self-sign the CA")?;
        Ok(TestCa {
            trust_domain: trust_domain.to_string(),
            cert,
            key,
        })
    }

    /// The trust domain this CA issues for.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The CA certificate (PEM), the trust bundle.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// `spiffe://TD/ns/NS/sa/SA` in this CA's trust domain.
    pub fn spiffe_id(&self, ns: &str, sa: &str) -> String {
        format!("spiffe://{}/ns/{ns}/sa/{sa}", self.trust_domain)
    }

    /// Issues an X.509-SVID for `spiffe_id` (which may lie outside the trust domain:
    /// tests use that to build bad peers).
    pub fn issue(&self, spiffe_id: &str) -> Result<X509Svid> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "meshpass e2e");
        params.distinguished_name = dn;
        params.subject_alt_names =
            vec![SanType::URI(spiffe_id.try_into().with_context(|| {
                format!("{spiffe_id} is not a valid URI")
            })?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::KeyAgreement,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().context("cannot generate an SVID key")?;
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .with_context(|| format!("cannot sign the SVID for {spiffe_id}"))?;
        Ok(X509Svid {
            spiffe_id: spiffe_id.to_string(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes the CA certificate to `dir/ca.pem` and returns its path.
    pub fn write_bundle(&self, dir: &Path) -> Result<PathBuf> {
        let path = dir.join("ca.pem");
        std::fs::write(&path, self.cert_pem())
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    }
}

impl X509Svid {
    /// Writes the certificate and key as `dir/NAME.crt` and `dir/NAME.key`.
    pub fn write(&self, dir: &Path, name: &str) -> Result<SvidFiles> {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &self.cert_pem)
            .with_context(|| format!("cannot write {}", cert.display()))?;
        std::fs::write(&key, &self.key_pem)
            .with_context(|| format!("cannot write {}", key.display()))?;
        Ok(SvidFiles { cert, key })
    }
}
