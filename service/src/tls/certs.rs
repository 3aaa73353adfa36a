//! A development CA for a fleet (`factotum-coordinator certs`), so the quick start and the
//! tests need no openssl: in cert-manager's file names, `ca.crt` (and `ca.key`),
//! `server/tls.{crt,key}` for the coordinators (every host given as a DNS or IP SAN, and the URI
//! SAN `factotum:coordinator`),
//! `agents/<name>/tls.{crt,key}` (CN and DNS SAN the agent's name, URI SAN `factotum:agent`) and
//! `cli/tls.{crt,key}` (URI SAN `factotum:client`). Keys are written 0600. Production uses the
//! operator's PKI (cert-manager, Vault) with the same layout.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use super::{TlsError, AGENT_URI, CLIENT_URI, COORDINATOR_URI};

fn failed(e: impl std::fmt::Display) -> TlsError {
    TlsError::Config(format!("cannot make the certificates: {e}"))
}

fn write(path: &Path, text: &str, secret: bool) -> Result<PathBuf, TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| TlsError::Read {
            path: dir.to_path_buf(),
            why: e.to_string(),
        })?;
    }
    let mode = if secret { 0o600 } else { 0o644 };
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| TlsError::Read {
            path: path.to_path_buf(),
            why: e.to_string(),
        })?;
    Ok(path.to_path_buf())
}

/// A leaf's parameters: its common name and subject alternative names, for server or client use.
fn leaf(cn: &str, sans: Vec<SanType>, server: bool) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.subject_alt_names = sans;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    // Coordinators present their server certificate to each other as a client one too.
    params.extended_key_usages = if server {
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ]
    } else {
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    };
    params
}

fn host_san(host: &str) -> Result<SanType, TlsError> {
    Ok(match host.parse::<IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(host.try_into().map_err(failed)?),
    })
}

fn uri(u: &str) -> Result<SanType, TlsError> {
    Ok(SanType::URI(u.try_into().map_err(failed)?))
}

/// Writes a CA, a server certificate for `hosts`, one for each agent, and one for the CLI under
/// `out`; returns the files written.
pub fn generate(out: &Path, hosts: &[String], agents: &[String]) -> Result<Vec<PathBuf>, TlsError> {
    let mut written = Vec::new();
    let ca_key = KeyPair::generate().map_err(failed)?;
    let mut ca = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Factotum development CA");
    ca.distinguished_name = dn;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).map_err(failed)?;
    written.push(write(&out.join("ca.crt"), &ca_cert.pem(), false)?);
    written.push(write(&out.join("ca.key"), &ca_key.serialize_pem(), true)?);
    let issuer = Issuer::new(ca, ca_key);
    let mut issue = |dir: PathBuf, params: CertificateParams| -> Result<(), TlsError> {
        let key = KeyPair::generate().map_err(failed)?;
        let cert = params.signed_by(&key, &issuer).map_err(failed)?;
        written.push(write(&dir.join("tls.crt"), &cert.pem(), false)?);
        written.push(write(&dir.join("tls.key"), &key.serialize_pem(), true)?);
        Ok(())
    };
    let server_cn = hosts.first().map_or("factotum-coordinator", String::as_str);
    let mut sans = hosts
        .iter()
        .map(|h| host_san(h))
        .collect::<Result<Vec<_>, _>>()?;
    sans.push(uri(COORDINATOR_URI)?);
    issue(out.join("server"), leaf(server_cn, sans, true))?;
    for agent in agents {
        let sans = vec![
            SanType::DnsName(agent.as_str().try_into().map_err(failed)?),
            uri(AGENT_URI)?,
        ];
        issue(out.join("agents").join(agent), leaf(agent, sans, false))?;
    }
    issue(
        out.join("cli"),
        leaf("factotum-cli", vec![uri(CLIENT_URI)?], false),
    )?;
    Ok(written)
}
