//! TLS on the gRPC and HTTP listeners, with rustls (ring): the certificate and key from
//! PEM files, optionally client certificates checked against a CA (mutual TLS), and the
//! files re-read on SIGHUP or when they change, so that a rotated certificate is served
//! to the next connection while open ones carry on.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use crossenc_config::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig as RustlsConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// How often the certificate files are checked for a change.
const FILE_CHECK: Duration = Duration::from_secs(2);

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("{key} {path}: {reason}")]
pub struct TlsError {
    key: &'static str,
    path: PathBuf,
    reason: String,
}

/// The acceptors of both listeners, sharing one certificate that can be replaced.
#[derive(Clone)]
pub struct Tls {
    /// Offers HTTP/2 only: gRPC.
    pub grpc: TlsAcceptor,
    /// Offers HTTP/2 and HTTP/1.1.
    pub http: TlsAcceptor,
    certificate: Arc<ReloadingCertificate>,
}

impl Tls {
    /// The acceptors for the configured files; `None` without TLS. A missing, unreadable
    /// or mismatched file is an error naming it.
    pub fn load(server: &ServerConfig) -> Result<Option<Self>, TlsError> {
        if !server.tls() {
            return Ok(None);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let files = CertificateFiles {
            cert: server.tls_cert_file.clone(),
            key: server.tls_key_file.clone(),
        };
        let certificate = Arc::new(ReloadingCertificate {
            current: RwLock::new(Arc::new(files.load(&provider)?)),
            stamp: RwLock::new(files.stamp()),
            files,
            provider: Arc::clone(&provider),
        });
        let client_ca = &server.tls_client_ca_file;
        let client_ca = (!client_ca.as_os_str().is_empty()).then_some(client_ca.as_path());
        let acceptor = |alpn: &[&[u8]]| -> Result<TlsAcceptor, TlsError> {
            let config = server_config(&provider, &certificate, client_ca, alpn)?;
            Ok(TlsAcceptor::from(Arc::new(config)))
        };
        Ok(Some(Self {
            grpc: acceptor(&[b"h2"])?,
            http: acceptor(&[b"h2", b"http/1.1"])?,
            certificate,
        }))
    }

    /// Re-reads the certificate on SIGHUP, and whenever its files change, until `stop`.
    /// A file that cannot be read or does not match keeps the served certificate, with
    /// an error in the log.
    pub async fn watch(self, mut stop: watch::Receiver<bool>) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangup = signal(SignalKind::hangup()).ok();
        let mut ticker = tokio::time::interval(FILE_CHECK);
        loop {
            let asked = tokio::select! {
                _ = ticker.tick() => false,
                Some(()) = recv(&mut hangup) => true,
                _ = stop.wait_for(|&s| s) => return,
            };
            let certificate = Arc::clone(&self.certificate);
            let _ = tokio::task::spawn_blocking(move || certificate.refresh(asked)).await;
        }
    }
}

async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match signal {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

fn server_config(
    provider: &Arc<CryptoProvider>,
    certificate: &Arc<ReloadingCertificate>,
    client_ca: Option<&Path>,
    alpn: &[&[u8]],
) -> Result<RustlsConfig, TlsError> {
    let builder = RustlsConfig::builder_with_provider(Arc::clone(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error("server.tls_cert_file", Path::new(""), e))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let fail = |reason: String| tls_error("server.tls_client_ca_file", path, reason);
            let mut roots = RootCertStore::empty();
            for cert in read_certificates(path).map_err(fail)? {
                roots.add(cert).map_err(|e| fail(e.to_string()))?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
                    .build()
                    .map_err(|e| fail(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::clone(certificate) as _);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

fn tls_error(key: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError {
        key,
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_reason(&e))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem_reason(&e))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    Ok(certs)
}

fn pem_reason(error: &rustls_pki_types::pem::Error) -> String {
    match error {
        rustls_pki_types::pem::Error::Io(io) => format!("cannot read it: {io}"),
        other => format!("not valid PEM: {other:?}"),
    }
}

/// The certificate and key files.
#[derive(Debug)]
struct CertificateFiles {
    cert: PathBuf,
    key: PathBuf,
}

impl CertificateFiles {
    fn load(&self, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
        let chain = read_certificates(&self.cert)
            .map_err(|reason| tls_error("server.tls_cert_file", &self.cert, reason))?;
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|e| tls_error("server.tls_key_file", &self.key, pem_reason(&e)))?;
        CertifiedKey::from_der(chain, key, provider).map_err(|e| {
            let reason = format!("does not fit server.tls_cert_file: {e}");
            tls_error("server.tls_key_file", &self.key, reason)
        })
    }

    /// When each file last changed, to notice a rotation.
    fn stamp(&self) -> [Option<SystemTime>; 2] {
        let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        [modified(&self.cert), modified(&self.key)]
    }
}

/// The certificate every new handshake gets: replaced whole when the files change.
#[derive(Debug)]
struct ReloadingCertificate {
    current: RwLock<Arc<CertifiedKey>>,
    stamp: RwLock<[Option<SystemTime>; 2]>,
    files: CertificateFiles,
    provider: Arc<CryptoProvider>,
}

impl ReloadingCertificate {
    /// Re-reads the files if they changed since the last read, or if `asked` (SIGHUP).
    fn refresh(&self, asked: bool) {
        let stamp = self.files.stamp();
        let changed = *self.stamp.read().unwrap_or_else(|e| e.into_inner()) != stamp;
        if !(asked || changed) {
            return;
        }
        *self.stamp.write().unwrap_or_else(|e| e.into_inner()) = stamp;
        match self.files.load(&self.provider) {
            Ok(certificate) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(certificate);
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
            }
            // A half-written pair is read again when its second file lands.
            Err(error) => {
                tracing::error!(%error, "TLS certificate not reloaded; serving the previous one")
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.current.read().unwrap_or_else(|e| e.into_inner()),
        ))
    }
}
