//! SIP over TLS for the SIPREC server: the rustls server configuration built
//! from `sources.siprec.tls_cert`, `tls_key` and (for mutual TLS)
//! `tls_client_ca`, all PEM files. Also the rustls client configuration of
//! the live stream ([`client_config`]: the system roots plus an optional CA
//! file, like the cloud client).
//!
//! Used twice: when the config is checked (so `check-config` and a SIGHUP with
//! a broken certificate report the file, line and reason) and when the
//! listener starts or is reloaded. Errors never contain key material: a key
//! file's problem is reported by kind only.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Which key of `[sources.siprec]` a problem is about, and what it is.
#[derive(Debug)]
pub struct TlsError {
    pub key: &'static str,
    pub message: String,
    /// The file could not be read for lack of permission (check-config run
    /// by someone other than the service user).
    pub permission_denied: bool,
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sources.siprec.{}: {}", self.key, self.message)
    }
}

fn err(key: &'static str, message: String) -> TlsError {
    TlsError {
        key,
        message,
        permission_denied: false,
    }
}

fn io_err(key: &'static str, path: &Path, e: &io::Error) -> TlsError {
    TlsError {
        key,
        message: format!("cannot read {}: {e}", path.display()),
        permission_denied: e.kind() == io::ErrorKind::PermissionDenied,
    }
}

/// A PEM problem in a certificate file (safe to show: certificates are public).
fn pem_message(e: &pem::Error) -> String {
    match e {
        pem::Error::NoItemsFound => "no PEM CERTIFICATE found".into(),
        other => format!("not valid PEM: {other}"),
    }
}

/// Every certificate in a PEM file (at least one).
pub(crate) fn read_certs(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    // Read first, so an unreadable file says so plainly.
    let bytes = std::fs::read(path).map_err(|e| io_err(key, path, &e))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(key, format!("{}: {}", path.display(), pem_message(&e))))?;
    if certs.is_empty() {
        return Err(err(
            key,
            format!("{}: no PEM CERTIFICATE found", path.display()),
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let key = "tls_key";
    // The PEM text is wiped from memory when dropped.
    let bytes = zeroize::Zeroizing::new(std::fs::read(path).map_err(|e| io_err(key, path, &e))?);
    // Only the kind of problem: the text of a key file is never repeated.
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        let what = match e {
            pem::Error::NoItemsFound => {
                "no PEM private key found (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)"
            }
            _ => "not a valid PEM private key",
        };
        err(key, format!("{}: {what}", path.display()))
    })
}

/// The TLS server configuration. With `client_ca`, every client must present
/// a certificate issued by one of those CAs (mutual TLS).
pub(crate) fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = read_certs("tls_cert", cert)?;
    let private = read_key(key)?;
    let provider = Arc::new(ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| err("tls_listen", format!("TLS set-up: {e}")))?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in read_certs("tls_client_ca", ca)? {
                roots.add(c).map_err(|e| {
                    err(
                        "tls_client_ca",
                        format!("{}: not a usable CA certificate: {e}", ca.display()),
                    )
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| err("tls_client_ca", format!("{}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let cfg = builder.with_single_cert(chain, private).map_err(|e| {
        err(
            "tls_key",
            format!(
                "{} does not go with the certificate in {}: {e}",
                key.display(),
                cert.display()
            ),
        )
    })?;
    Ok(Arc::new(cfg))
}

/// A TLS client configuration trusting the system's roots plus the PEM
/// certificates in `ca_file` (the ring provider, TLS 1.2 and 1.3). The
/// error names the file and what is wrong with it.
pub(crate) fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for c in native.certs {
        // A system certificate rustls cannot use is skipped, as reqwest does.
        let _ = roots.add(c);
    }
    if let Some(ca) = ca_file {
        for c in read_certs("ca_file", ca).map_err(|e| e.message)? {
            roots
                .add(c)
                .map_err(|e| format!("{}: not a usable CA certificate: {e}", ca.display()))?;
        }
    }
    let cfg = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pki(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k, other) = (dir.join("c.pem"), dir.join("k.pem"), dir.join("o.pem"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        std::fs::write(&other, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
        (c, k, other)
    }

    #[test]
    fn good_files_make_a_config_with_and_without_client_ca() {
        let d = tempfile::tempdir().unwrap();
        let (c, k, _) = pki(d.path());
        assert!(server_config(&c, &k, None).is_ok());
        assert!(server_config(&c, &k, Some(&c)).is_ok());
    }

    #[test]
    fn problems_name_the_key_and_never_the_key_material() {
        let d = tempfile::tempdir().unwrap();
        let (c, k, other) = pki(d.path());
        let e = server_config(&c, &other, None).unwrap_err();
        assert_eq!(e.key, "tls_key");
        assert!(
            e.message.contains("does not go with the certificate"),
            "{e}"
        );
        // A key file given as the certificate: no certificate in it.
        let e = server_config(&k, &k, None).unwrap_err();
        assert_eq!(e.key, "tls_cert");
        assert!(e.message.contains("no PEM CERTIFICATE"), "{e}");
        // A broken key: the message says what, not the file's text.
        let text = std::fs::read_to_string(&k).unwrap();
        let broken = d.path().join("broken.pem");
        let mangled = text.replace('A', "*");
        std::fs::write(&broken, &mangled).unwrap();
        let e = server_config(&c, &broken, None).unwrap_err();
        assert_eq!(e.key, "tls_key");
        let body: Vec<&str> = mangled
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        assert!(body.iter().all(|l| !e.message.contains(l)), "{e}");
        let e = server_config(&c, &d.path().join("missing.pem"), None).unwrap_err();
        assert_eq!(e.key, "tls_key");
        assert!(e.message.contains("cannot read"), "{e}");
        let e = server_config(&c, &k, Some(&k)).unwrap_err();
        assert_eq!(e.key, "tls_client_ca");
    }
}
