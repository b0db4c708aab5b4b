//! The serving certificate and the client CA bundle, re-read when their files change:
//! cert-manager, Vault Agent and SPIRE helpers renew a certificate in place, SPIRE
//! rotates its CA and the bundle file is rewritten, and a service that kept the first
//! ones would serve an expired certificate, or refuse every caller of the new CA, until
//! restarted. Checked on a handshake at most every [`RECHECK`] (a `stat` per file);
//! files that do not load (half written, the key not matching the certificate) keep
//! the last good ones and say so.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::UnixTime;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::tls::TlsError;

/// How often a handshake looks at the files' modification times.
pub const RECHECK: Duration = Duration::from_secs(5);

/// `cert_file` and `key_file` of a TLS section (`server.tls`, `management.tls`),
/// served as they are now.
#[derive(Debug)]
pub struct ReloadingCert {
    section: &'static str,
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    current: Arc<CertifiedKey>,
    /// The files' stamps when `current` was read.
    stamp: Option<(FileStamp, FileStamp)>,
    checked: Instant,
}

impl ReloadingCert {
    /// Reads the pair now; errors name the field (`section.cert_file`, ...).
    pub fn load(
        section: &'static str,
        cert_file: &Path,
        key_file: &Path,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, TlsError> {
        let stamp = stamp(cert_file, key_file);
        let current = Arc::new(read(section, cert_file, key_file, &provider)?);
        warn_if_expired(section, cert_file, &current);
        Ok(ReloadingCert {
            section,
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            provider,
            state: Mutex::new(State {
                current,
                stamp,
                checked: Instant::now(),
            }),
        })
    }

    /// The pair to serve, read again first when the files changed.
    fn current(&self) -> Arc<CertifiedKey> {
        // Nothing panics under the lock; were it poisoned, the last pair still serves.
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.checked.elapsed() >= RECHECK {
            s.checked = Instant::now();
            let now = stamp(&self.cert_file, &self.key_file);
            if now.is_some() && now != s.stamp {
                match read(
                    self.section,
                    &self.cert_file,
                    &self.key_file,
                    &self.provider,
                ) {
                    Ok(k) => {
                        s.current = Arc::new(k);
                        s.stamp = now;
                        tracing::info!(cert_file = %self.cert_file.display(), "TLS certificate re-read");
                        warn_if_expired(self.section, &self.cert_file, &s.current);
                    }
                    // A renewal in progress writes one file, then the other: tried
                    // again on the next check.
                    Err(e) => {
                        tracing::warn!(error = %e, "renewed TLS certificate not loaded; serving the previous one")
                    }
                }
            }
        }
        Arc::clone(&s.current)
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// `client_ca_file` of a TLS section: client certificates are verified against the
/// bundle as it is now. A certificate is optional at the TLS level (verifiers fetch the JWKS
/// without one); no CA names are hinted to clients (they could change under a borrow).
#[derive(Debug)]
pub struct ReloadingClientCa {
    section: &'static str,
    file: PathBuf,
    provider: Arc<CryptoProvider>,
    state: Mutex<CaState>,
}

#[derive(Debug)]
struct CaState {
    current: Arc<dyn ClientCertVerifier>,
    stamp: Option<FileStamp>,
    checked: Instant,
}

impl ReloadingClientCa {
    /// Reads the bundle now; errors name the field.
    pub fn load(
        section: &'static str,
        file: &Path,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, TlsError> {
        let stamp = modified(file);
        let current = read_ca(section, file, &provider)?;
        Ok(ReloadingClientCa {
            section,
            file: file.to_path_buf(),
            provider,
            state: Mutex::new(CaState {
                current,
                stamp,
                checked: Instant::now(),
            }),
        })
    }

    /// The verifier of the bundle as it is now, read again first when the file changed.
    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.checked.elapsed() >= RECHECK {
            s.checked = Instant::now();
            let now = modified(&self.file);
            if now.is_some() && now != s.stamp {
                match read_ca(self.section, &self.file, &self.provider) {
                    Ok(v) => {
                        s.current = v;
                        s.stamp = now;
                        tracing::info!(client_ca_file = %self.file.display(), "client CA bundle re-read");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "changed client CA bundle not loaded; verifying with the previous one")
                    }
                }
            }
        }
        Arc::clone(&s.current)
    }
}

impl ClientCertVerifier for ReloadingClientCa {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

fn read_ca(
    section: &str,
    file: &Path,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let bad = |e: &dyn std::fmt::Display| TlsError::File {
        field: format!("{section}.client_ca_file"),
        reason: e.to_string(),
    };
    let cas = CertificateDer::pem_file_iter(file)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad(&pem_reason(&e)))?;
    if cas.is_empty() {
        return Err(bad(&"holds no certificate"));
    }
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        roots.add(ca).map_err(|e| bad(&e))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Rustls(e.to_string()))
}

/// What tells a file changed: its modification time alone does not (the kernel stamps
/// it from a coarse clock, so a bundle read half-written and finished within the same
/// tick would keep its partial read); its size and inode too (a rename-into-place writer
/// gives a new inode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: SystemTime,
    len: u64,
    ino: u64,
}

fn modified(p: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(p).ok()?;
    Some(FileStamp {
        modified: m.modified().ok()?,
        len: m.len(),
        ino: m.ino(),
    })
}

fn stamp(cert_file: &Path, key_file: &Path) -> Option<(FileStamp, FileStamp)> {
    Some((modified(cert_file)?, modified(key_file)?))
}

/// Says so when the certificate to serve has expired: every client refuses it, and the
/// listener looks healthy otherwise.
fn warn_if_expired(section: &str, cert_file: &Path, key: &CertifiedKey) {
    let not_after = key
        .cert
        .first()
        .and_then(|c| crate::tls::not_after(c.as_ref()));
    if let Some(t) = not_after.filter(|t| *t <= SystemTime::now()) {
        tracing::warn!(
            cert_file = %cert_file.display(),
            not_after = %httpdate::fmt_http_date(t),
            "{section}.cert_file: the certificate has expired; every client refuses it until it is renewed"
        );
    }
}

fn read(
    section: &str,
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let file = |name: &str, e: &dyn std::fmt::Display| TlsError::File {
        field: format!("{section}.{name}"),
        reason: e.to_string(),
    };
    let certs = CertificateDer::pem_file_iter(cert_file)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file("cert_file", &pem_reason(&e)))?;
    if certs.is_empty() {
        return Err(file("cert_file", &"holds no certificate"));
    }
    let key =
        PrivateKeyDer::from_pem_file(key_file).map_err(|e| file("key_file", &pem_reason(&e)))?;
    CertifiedKey::from_der(certs, key, provider)
        .map_err(|e| file("key_file", &format!("does not fit the certificate: {e}")))
}

/// Why a PEM file did not parse, in words of our own: the parser's `Display` quotes the
/// offending line as bytes, which for a key whose line breaks were lost (pasted from
/// JSON, an env var) is the whole private key, in `check-config` and in the log.
fn pem_reason(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error as E;
    match e {
        E::MissingSectionEnd { .. } => {
            "a PEM section has no END line (were its line breaks lost?)".into()
        }
        E::IllegalSectionStart { .. } => {
            "a PEM BEGIN line is malformed (were its line breaks lost?)".into()
        }
        E::Base64Decode(_) => "a PEM section is not valid base64".into(),
        E::Io(io) => format!("cannot be read: {io}"),
        E::NoItemsFound => "holds no PEM item of the expected kind".into(),
        E::SectionTooLarge => "a PEM section is too large".into(),
        _ => "is not a PEM file this service can read".into(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// A certificate and its key, PEM.
    fn pair(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn due(r: &ReloadingCert) {
        r.state.lock().unwrap().checked = Instant::now() - RECHECK;
    }

    fn write(path: &Path, body: &str, mtime_secs: u64) {
        std::fs::write(path, body).unwrap();
        let f = std::fs::File::options().write(true).open(path).unwrap();
        f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(mtime_secs))
            .unwrap();
    }

    #[test]
    fn a_renewed_pair_is_served_and_a_mismatched_one_keeps_the_last_good() {
        let dir = tempfile::tempdir().unwrap();
        let (cf, kf) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let (c1, k1) = pair("one.test");
        write(&cf, &c1, 1_000);
        write(&kf, &k1, 1_000);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let r = ReloadingCert::load("server.tls", &cf, &kf, provider).unwrap();
        let first = r.current().cert[0].clone();

        // Half a renewal: the new certificate beside the old key.
        let (c2, k2) = pair("two.test");
        write(&cf, &c2, 2_000);
        due(&r);
        assert_eq!(r.current().cert[0], first, "a mismatched pair was served");

        // The renewal completes: the new pair is served.
        write(&kf, &k2, 2_001);
        due(&r);
        let now = r.current().cert[0].clone();
        assert_ne!(now, first, "the renewed certificate is not served");
        assert_eq!(
            now.as_ref(),
            rustls::pki_types::CertificateDer::from_pem_slice(c2.as_bytes())
                .unwrap()
                .as_ref()
        );
    }
}
