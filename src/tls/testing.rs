//! A throwaway PKI for tests: certificate authorities that issue server
//! and client certificates (also expired ones), written to PEM files, and
//! a client that reports which certificate a server presents.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::{ALPN_H2, provider};

/// The trust domain of the node URIs test certificates carry.
pub const TRUST_DOMAIN: &str = "switchyard.test";

/// A certificate authority.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// Its certificate, PEM.
    pub cert_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

/// A certificate and its private key.
#[derive(Debug, Clone)]
pub struct Pair {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PEM (PKCS#8).
    pub key_pem: String,
    /// The certificate, DER: what a peer sees in the handshake.
    pub cert_der: CertificateDer<'static>,
}

impl Ca {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("generate CA key");
        let cert = params.self_signed(&key).expect("self-sign CA");
        Ca {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `localhost` and 127.0.0.1, with `name` as
    /// its common name (so that two of them differ).
    pub fn server(&self, name: &str) -> Pair {
        let mut params =
            CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).expect("SANs");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A client certificate naming `node` (`spiffe://switchyard.test/node/NODE`),
    /// or no node.
    pub fn client(&self, node: Option<&str>) -> Pair {
        self.issue(client_params(node))
    }

    /// A client certificate for `node` that expired in 2020.
    pub fn expired_client(&self, node: Option<&str>) -> Pair {
        let mut params = client_params(node);
        params.not_before = rcgen::date_time_ymd(2019, 1, 1);
        params.not_after = rcgen::date_time_ymd(2020, 1, 1);
        self.issue(params)
    }

    /// A client certificate with these URI SANs, in this order.
    pub fn client_with_uris(&self, uris: &[&str]) -> Pair {
        let mut params = client_params(None);
        for uri in uris {
            let uri = (*uri).try_into().expect("IA5 URI");
            params.subject_alt_names.push(SanType::URI(uri));
        }
        self.issue(params)
    }

    fn issue(&self, params: CertificateParams) -> Pair {
        let key = KeyPair::generate().expect("generate key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        Pair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
        }
    }

    /// Writes its certificate to `dir/NAME.pem`.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        write(dir, &format!("{name}.pem"), &self.cert_pem)
    }
}

fn client_params(node: Option<&str>) -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, node.unwrap_or("client"));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if let Some(node) = node {
        let uri = format!("spiffe://{TRUST_DOMAIN}/node/{node}");
        params
            .subject_alt_names
            .push(SanType::URI(uri.try_into().expect("IA5 URI")));
    }
    params
}

impl Pair {
    /// Writes `dir/NAME.crt` and `dir/NAME.key`; returns (cert, key).
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        (
            write(dir, &format!("{name}.crt"), &self.cert_pem),
            write(dir, &format!("{name}.key"), &self.key_pem),
        )
    }

    /// Replaces the files at `cert` and `key` with this pair, each by an
    /// atomic rename (as certificate managers do).
    pub fn replace(&self, cert: &Path, key: &Path) {
        replace(cert, &self.cert_pem);
        replace(key, &self.key_pem);
    }
}

/// Writes `text` to `dir/name`; returns the path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write test PEM file");
    path
}

/// Replaces `path` with `text` by writing a sibling and renaming it over.
pub fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).expect("write test PEM file");
    std::fs::rename(&tmp, path).expect("rename test PEM file");
}

/// Opens a TLS connection to `addr` trusting `ca`, presenting `client` if
/// given, and returns the certificate the server presented.
pub async fn served_certificate(
    addr: SocketAddr,
    ca: &Ca,
    client: Option<&Pair>,
) -> io::Result<CertificateDer<'static>> {
    let stream = connect(addr, ca, client).await?;
    let (_, session) = stream.get_ref();
    session
        .peer_certificates()
        .and_then(<[_]>::first)
        .map(|c| c.clone().into_owned())
        .ok_or_else(|| io::Error::other("the server presented no certificate"))
}

/// A TLS connection (ALPN `h2`) to `addr` trusting `ca`, presenting
/// `client` if given.
pub async fn connect(
    addr: SocketAddr,
    ca: &Ca,
    client: Option<&Pair>,
) -> io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.cert_pem.as_bytes()) {
        roots
            .add(cert.map_err(io::Error::other)?)
            .map_err(io::Error::other)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_root_certificates(roots);
    let mut config = match client {
        Some(pair) => {
            let chain = vec![pair.cert_der.clone()];
            let key =
                PrivateKeyDer::from_pem_slice(pair.key_pem.as_bytes()).map_err(io::Error::other)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(io::Error::other)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::IpAddress(addr.ip().into());
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}
