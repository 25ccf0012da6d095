//! TLS on the gRPC and HTTP listeners, with rustls (ring): the certificate and key from
//! PEM files, optionally client certificates checked against a CA (mutual TLS), and the
//! files re-read on SIGHUP or when they change ([`crate::reload`]), so that a rotated
//! certificate or client CA serves the next connection while open ones carry on.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::reload::{Reload, WatchedFiles};
use crossenc_config::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig as RustlsConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("{key} {path}: {reason}")]
pub struct TlsError {
    key: &'static str,
    path: PathBuf,
    reason: String,
}

/// The acceptors of both listeners, sharing one certificate that can be replaced; the
/// acceptors themselves are replaced when the client CA changes.
#[derive(Clone)]
pub struct Tls {
    /// Offers HTTP/2 only: gRPC.
    pub grpc: Arc<LiveAcceptor>,
    /// Offers HTTP/2 and HTTP/1.1.
    pub http: Arc<LiveAcceptor>,
    certificate: Arc<ReloadingCertificate>,
    client_ca: Option<Arc<ReloadingClientCa>>,
}

/// A TLS acceptor that can be swapped while connections are accepted: each new
/// connection takes the current one; open ones keep theirs.
pub struct LiveAcceptor {
    current: RwLock<TlsAcceptor>,
    alpn: &'static [&'static [u8]],
}

impl LiveAcceptor {
    pub fn get(&self) -> TlsAcceptor {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
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
            watched: WatchedFiles::new(
                "server.tls_cert_file",
                vec![files.cert.clone(), files.key.clone()],
            ),
            files,
            provider: Arc::clone(&provider),
        });
        let client_ca = &server.tls_client_ca_file;
        let roots = match client_ca.as_os_str().is_empty() {
            true => None,
            false => Some(read_client_ca(client_ca)?),
        };
        let acceptor = |alpn: &'static [&'static [u8]]| -> Result<Arc<LiveAcceptor>, TlsError> {
            let config = server_config(&provider, &certificate, roots.clone(), alpn)?;
            Ok(Arc::new(LiveAcceptor {
                current: RwLock::new(TlsAcceptor::from(Arc::new(config))),
                alpn,
            }))
        };
        let (grpc, http) = (acceptor(&[b"h2"])?, acceptor(&[b"h2", b"http/1.1"])?);
        let client_ca = roots.is_some().then(|| {
            Arc::new(ReloadingClientCa {
                watched: WatchedFiles::new("server.tls_client_ca_file", vec![client_ca.clone()]),
                acceptors: [Arc::clone(&grpc), Arc::clone(&http)],
                certificate: Arc::clone(&certificate),
            })
        });
        Ok(Some(Self {
            grpc,
            http,
            certificate,
            client_ca,
        }))
    }

    /// What [`crate::reload::watch`] reads again: the certificate and key, and the
    /// client CA.
    pub fn reloaders(&self) -> Vec<Arc<dyn Reload>> {
        let mut reloaders: Vec<Arc<dyn Reload>> = vec![Arc::clone(&self.certificate) as _];
        if let Some(client_ca) = &self.client_ca {
            reloaders.push(Arc::clone(client_ca) as _);
        }
        reloaders
    }
}

/// The client CA file: when it changes, both acceptors are rebuilt with its roots; a
/// file that cannot be read keeps the roots in force.
struct ReloadingClientCa {
    watched: WatchedFiles,
    acceptors: [Arc<LiveAcceptor>; 2],
    certificate: Arc<ReloadingCertificate>,
}

impl Reload for ReloadingClientCa {
    fn refresh(&self, asked: bool) {
        if !self.watched.changed(asked) {
            return;
        }
        let provider = &self.certificate.provider;
        let rebuilt = read_client_ca(self.watched.first()).and_then(|roots| {
            let build = |live: &LiveAcceptor| {
                server_config(provider, &self.certificate, Some(roots.clone()), live.alpn)
            };
            Ok([build(&self.acceptors[0])?, build(&self.acceptors[1])?])
        });
        match rebuilt {
            Ok(configs) => {
                for (live, config) in self.acceptors.iter().zip(configs) {
                    let acceptor = TlsAcceptor::from(Arc::new(config));
                    *live.current.write().unwrap_or_else(|e| e.into_inner()) = acceptor;
                }
                tracing::info!(file = %self.watched.first().display(), "TLS client CA reloaded");
            }
            Err(error) => {
                tracing::error!(%error, "TLS client CA not reloaded; the previous one stays in force")
            }
        }
    }
}

fn read_client_ca(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let fail = |reason: String| tls_error("server.tls_client_ca_file", path, reason);
    let mut roots = RootCertStore::empty();
    for cert in read_certificates(path).map_err(fail)? {
        roots.add(cert).map_err(|e| fail(e.to_string()))?;
    }
    Ok(Arc::new(roots))
}

fn server_config(
    provider: &Arc<CryptoProvider>,
    certificate: &Arc<ReloadingCertificate>,
    client_roots: Option<Arc<RootCertStore>>,
    alpn: &[&[u8]],
) -> Result<RustlsConfig, TlsError> {
    let builder = RustlsConfig::builder_with_provider(Arc::clone(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error("server.tls_cert_file", Path::new(""), e))?;
    let builder = match client_roots {
        None => builder.with_no_client_auth(),
        Some(roots) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, Arc::clone(provider))
                .build()
                .map_err(|e| tls_error("server.tls_client_ca_file", Path::new(""), e))?;
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
}

/// The certificate every new handshake gets: replaced whole when the files change.
#[derive(Debug)]
struct ReloadingCertificate {
    current: RwLock<Arc<CertifiedKey>>,
    watched: WatchedFiles,
    files: CertificateFiles,
    provider: Arc<CryptoProvider>,
}

impl Reload for ReloadingCertificate {
    /// Re-reads the files if they changed since the last read, or if `asked` (SIGHUP).
    fn refresh(&self, asked: bool) {
        if !self.watched.changed(asked) {
            return;
        }
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
