//! TLS for the gRPC port and its clients, with rustls (no OpenSSL): PEM files read into
//! configs, a server config that can be reloaded (SIGHUP) while connections made with the old
//! one stay up, what a peer's certificate says of it, and the client side for tonic.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

pub mod certs;

/// URI SANs that tell agent, client and coordinator certificates apart (the `certs` helper
/// writes them; an operator's PKI adds them as `uris:` in cert-manager, `uri_sans` in Vault).
pub const AGENT_URI: &str = "factotum:agent";
pub const CLIENT_URI: &str = "factotum:client";
/// A peer coordinator: the only caller whose word about a forwarded client is taken.
pub const COORDINATOR_URI: &str = "factotum:coordinator";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {why}")]
    Read { path: PathBuf, why: String },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{0}")]
    Config(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates in a PEM file (a chain, or a CA bundle).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = |why: String| TlsError::Read {
        path: path.to_path_buf(),
        why,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| read(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The private key in a PEM file.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Read {
        path: path.to_path_buf(),
        why: e.to_string(),
    })
}

fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| TlsError::Config(format!("{}: {e}", path.display())))?;
    }
    Ok(roots)
}

/// The files a TLS server is made of.
#[derive(Debug, Clone)]
pub struct ServerFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Client certificates are checked against these CAs (and may then be presented: a client
    /// without one is let through to the application, which decides).
    pub client_ca: Option<PathBuf>,
}

impl ServerFiles {
    /// A server config from the files as they are now (HTTP/2 only, as gRPC needs).
    pub fn load(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match &self.client_ca {
            Some(ca) => {
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
                        .allow_unauthenticated()
                        .build()
                        .map_err(|e| TlsError::Config(format!("{}: {e}", ca.display())))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(read_certs(&self.cert)?, read_key(&self.key)?)
            .map_err(|e| {
                TlsError::Config(format!(
                    "{} and {}: {e}",
                    self.cert.display(),
                    self.key.display()
                ))
            })?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

/// A server config that can be replaced (certificate rotation): each new connection takes the
/// current one; connections already made keep theirs. Two flavours of the same files: gRPC's
/// (HTTP/2 only) and the HTTP port's (HTTP/1.1 too: probes and scrapers speak it).
#[derive(Debug)]
pub struct Reloadable {
    files: ServerFiles,
    current: RwLock<(Arc<ServerConfig>, Arc<ServerConfig>)>,
}

impl Reloadable {
    pub fn new(files: ServerFiles) -> Result<Reloadable, TlsError> {
        let current = RwLock::new(Self::both(&files)?);
        Ok(Reloadable { files, current })
    }

    fn both(files: &ServerFiles) -> Result<(Arc<ServerConfig>, Arc<ServerConfig>), TlsError> {
        let grpc = files.load()?;
        let mut http = (*grpc).clone();
        http.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok((grpc, Arc::new(http)))
    }

    /// Reads the files again; on an error the config in use is kept.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = Self::both(&self.files)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    /// For the gRPC port (ALPN `h2`).
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let config = self.current.read().unwrap_or_else(|p| p.into_inner());
        tokio_rustls::TlsAcceptor::from(Arc::clone(&config.0))
    }

    /// For an HTTP port (ALPN `h2` or `http/1.1`).
    pub fn http_acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let config = self.current.read().unwrap_or_else(|p| p.into_inner());
        tokio_rustls::TlsAcceptor::from(Arc::clone(&config.1))
    }
}

/// What a peer's (verified) certificate says of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerCert {
    /// Its subject's common name, then its DNS names.
    pub names: Vec<String>,
    /// Its URI names (`factotum:agent`, `factotum:client`, `factotum:coordinator`).
    pub uris: Vec<String>,
}

impl PeerCert {
    /// Reads a DER certificate; `None` if it cannot be parsed.
    pub fn from_der(der: &[u8]) -> Option<PeerCert> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let mut peer = PeerCert::default();
        for cn in cert.subject().iter_common_name() {
            if let Ok(cn) = cn.as_str() {
                peer.names.push(cn.to_string());
            }
        }
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => peer.names.push(d.to_string()),
                    GeneralName::URI(u) => peer.uris.push(u.to_string()),
                    _ => {}
                }
            }
        }
        Some(peer)
    }

    /// Whether it names `name` (its common name or a DNS name).
    pub fn names(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }

    /// Whether it was issued for a client (the CLI), not an agent.
    pub fn is_client(&self) -> bool {
        self.uris.iter().any(|u| u == CLIENT_URI)
    }

    /// Whether it was issued to a coordinator (`factotum:coordinator`): a peer that forwards
    /// its clients' calls and may say who they are.
    pub fn is_coordinator(&self) -> bool {
        self.uris.iter().any(|u| u == COORDINATOR_URI)
    }
}

/// A client's TLS flags (agents and the CLI): the CA to verify `https://` coordinators with,
/// and the client's own certificate, if it has one.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientArgs {
    /// The CA (PEM) to verify `https://` coordinators with.
    #[arg(long, env = "FACTOTUM_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// A certificate (PEM) to present to `https://` coordinators; an agent's must name the
    /// agent (its CN or a DNS name is its --name) when coordinators check agents' certificates.
    #[arg(
        long,
        env = "FACTOTUM_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(
        long,
        env = "FACTOTUM_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
}

impl ClientArgs {
    /// The tonic client TLS these flags describe.
    pub fn config(&self) -> Result<tonic::transport::ClientTlsConfig, TlsError> {
        let identity = self.tls_cert.as_deref().zip(self.tls_key.as_deref());
        client_config(self.tls_ca.as_deref(), identity)
    }
}

/// A tonic client's TLS: the CA to verify the server with (else the system's roots are not
/// used: pass one), and the client's own certificate and key, if it has one.
pub fn client_config(
    ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> Result<tonic::transport::ClientTlsConfig, TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| TlsError::Read {
            path: path.to_path_buf(),
            why: e.to_string(),
        })
    };
    let mut tls = tonic::transport::ClientTlsConfig::new();
    if let Some(ca) = ca {
        read_certs(ca)?; // a clear error for a file that is not a CA bundle
        tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?));
    }
    if let Some((cert, key)) = identity {
        read_certs(cert)?;
        read_key(key)?;
        tls = tls.identity(tonic::transport::Identity::from_pem(
            read(cert)?,
            read(key)?,
        ));
    }
    Ok(tls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_fleet_loads_and_its_certificates_say_who_they_are() {
        let dir = std::env::temp_dir().join(format!("factotum-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let written = certs::generate(
            &dir,
            &["127.0.0.1".into(), "coord.example".into()],
            &["etl-1".into()],
        )
        .unwrap();
        assert!(written.len() >= 7, "{written:?}");
        let files = ServerFiles {
            cert: dir.join("server/tls.crt"),
            key: dir.join("server/tls.key"),
            client_ca: Some(dir.join("ca.crt")),
        };
        let reloadable = Reloadable::new(files).unwrap();
        reloadable.reload().unwrap();
        let agent = read_certs(&dir.join("agents/etl-1/tls.crt")).unwrap();
        let peer = PeerCert::from_der(&agent[0]).unwrap();
        assert!(peer.names("etl-1") && !peer.is_client(), "{peer:?}");
        assert_eq!(peer.uris, [AGENT_URI]);
        let cli = read_certs(&dir.join("cli/tls.crt")).unwrap();
        assert!(PeerCert::from_der(&cli[0]).unwrap().is_client());
        let server = read_certs(&dir.join("server/tls.crt")).unwrap();
        let server = PeerCert::from_der(&server[0]).unwrap();
        assert!(server.names("coord.example") && server.is_coordinator());
        assert!(!peer.is_coordinator() && !server.is_client());
        client_config(Some(&dir.join("ca.crt")), None).unwrap();
        // A missing file is named.
        let missing = ServerFiles {
            cert: dir.join("nope.crt"),
            key: dir.join("server/tls.key"),
            client_ca: None,
        };
        let err = missing.load().unwrap_err().to_string();
        assert!(err.contains("nope.crt"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
