//! TLS and mutual TLS for the control plane's gRPC port and its clients
//! (rustls with the `ring` provider). Behind the `tls` feature.
//!
//! The server side re-reads its certificate and key when their files change
//! or on SIGHUP, so certificates rotate without a restart: each new handshake
//! uses the configuration current at that moment, and established
//! connections are left alone. Handshakes run beside the accept loop, each
//! bounded in time, so that a peer that never finishes one holds nothing but
//! its own slot; plaintext connections are bounded the same way until their
//! HTTP/2 preface arrives. The client side reads its files at each connection, so a
//! rotated client certificate is used from the next connection on.
//!
//! # Node identity
//!
//! A verified client certificate names a node by a URI subject alternative
//! name of the form `spiffe://<trust-domain>/node/<node-id>`, where the node
//! id follows the rules of [`crate::validate::name`]. The first URI SAN of
//! that form counts; a certificate without one names no node
//! ([`Peer::node`] is `None`). The trust domain is not checked here: the
//! client CA is the trust root.

use std::fmt;
use std::io::{self, Read as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::server::TlsStream;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Uri};
use tracing::{debug, error, info, warn};

use crate::validate::{self, Violations};

#[cfg(any(test, feature = "test-util"))]
pub mod testing;

/// How often [`ServerTls::watch`] looks at the files: a replaced
/// certificate is live within this (plus the reload itself).
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);
/// Largest PEM file read: certificate chains and keys are a few kilobytes;
/// anything bigger is not one, and is not read into memory whole.
const MAX_PEM_BYTES: u64 = 1 << 20;
/// Most handshakes (TLS, or waiting for a plaintext HTTP/2 preface) in
/// progress at once. Past this, new connections wait
/// in the listen backlog until a handshake ends (each is bounded in time).
const MAX_HANDSHAKES: usize = 1024;
/// First and longest pause after the listener fails to accept for want of
/// resources (EMFILE, ENOBUFS…): retrying at once would spin.
const ACCEPT_PAUSE_MIN: Duration = Duration::from_millis(10);
const ACCEPT_PAUSE_MAX: Duration = Duration::from_secs(1);
/// The ALPN protocol gRPC speaks.
const ALPN_H2: &[u8] = b"h2";

/// Which of the TLS files something is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum File {
    /// This side's certificate chain (the server's, or a client's own).
    Cert,
    /// This side's private key.
    Key,
    /// Server side: the CA whose client certificates are accepted.
    ClientCa,
    /// Client side: the CA the server's certificate must chain to.
    CaCert,
}

impl fmt::Display for File {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            File::Cert => "certificate",
            File::Key => "private key",
            File::ClientCa => "client CA",
            File::CaCert => "CA certificate",
        })
    }
}

/// Why TLS could not be set up. Each names the file (and so, through
/// [`Error::file`], the flag) and what is wrong with it; none echoes the
/// files' contents.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("{file} {}: cannot read it: {source}", path.display())]
    Read {
        /// Which file.
        file: File,
        /// Its path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file is too large to be a PEM certificate or key.
    #[error("{file} {}: larger than {MAX_PEM_BYTES} bytes, not a PEM file", path.display())]
    TooLarge {
        /// Which file.
        file: File,
        /// Its path.
        path: PathBuf,
    },
    /// The file is not well-formed PEM.
    #[error("{file} {}: {reason}", path.display())]
    Pem {
        /// Which file.
        file: File,
        /// Its path.
        path: PathBuf,
        /// What is malformed.
        reason: &'static str,
    },
    /// The file holds no certificate.
    #[error("{file} {}: no PEM certificate in it", path.display())]
    NoCertificate {
        /// Which file.
        file: File,
        /// Its path.
        path: PathBuf,
    },
    /// The key file holds no private key.
    #[error("private key {}: no PEM private key in it", path.display())]
    NoKey {
        /// Its path.
        path: PathBuf,
    },
    /// A certificate or key that parses but cannot be used.
    #[error("{file} {}: {reason}", path.display())]
    Unusable {
        /// Which file.
        file: File,
        /// Its path.
        path: PathBuf,
        /// What rustls said of it.
        reason: String,
    },
    /// The private key is not the certificate's.
    #[error("private key {} does not match certificate {}", key.display(), cert.display())]
    KeyMismatch {
        /// The certificate's path.
        cert: PathBuf,
        /// The key's path.
        key: PathBuf,
    },
    /// A client certificate without its key, or a key without its
    /// certificate.
    #[error("the {present} is set but not the {missing}: a client identity needs both")]
    Incomplete {
        /// The one that is set.
        present: File,
        /// The one that is missing.
        missing: File,
    },
    /// An `https://` address without a CA certificate to check the server.
    #[error("{url}: an https:// address needs a CA certificate to check the server with")]
    CaRequired {
        /// The address.
        url: String,
    },
    /// A TLS file is set, but the address is plaintext.
    #[error("{url} is plaintext http://, but a {file} is set: use an https:// address")]
    NotHttps {
        /// The address.
        url: String,
        /// The TLS file that is set.
        file: File,
    },
    /// The address is not usable.
    #[error("{url}: {reason}")]
    Address {
        /// The address.
        url: String,
        /// Why.
        reason: String,
    },
}

impl Error {
    /// The file this error is about, if any, so that a binary can name the
    /// flag that set it. `None` means the address.
    pub fn file(&self) -> Option<File> {
        match self {
            Error::Read { file, .. }
            | Error::TooLarge { file, .. }
            | Error::Pem { file, .. }
            | Error::NoCertificate { file, .. }
            | Error::Unusable { file, .. }
            | Error::NotHttps { file, .. } => Some(*file),
            Error::NoKey { .. } | Error::KeyMismatch { .. } => Some(File::Key),
            Error::Incomplete { missing, .. } => Some(*missing),
            Error::CaRequired { .. } => Some(File::CaCert),
            Error::Address { .. } => None,
        }
    }
}

/// The one crypto provider: ring (no aws-lc, which needs a C toolchain).
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// Reads a PEM file, refusing one too large to be a certificate or key.
fn read_pem(file: File, path: &Path) -> Result<Vec<u8>, Error> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_PEM_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|source| Error::Read {
            file,
            path: path.to_owned(),
            source,
        })?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(Error::TooLarge {
            file,
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

/// A PEM parse error in our words: rustls's quote the offending line, and
/// these files hold secrets.
fn pem_error(file: File, path: &Path, error: pem::Error) -> Error {
    let reason = match error {
        pem::Error::MissingSectionEnd { .. } => "a PEM section has no END line",
        pem::Error::IllegalSectionStart { .. } => "a PEM BEGIN line is malformed",
        pem::Error::Base64Decode(_) => "a PEM section is not valid base64",
        pem::Error::SectionTooLarge => "a PEM section is too large",
        pem::Error::Io(source) => {
            return Error::Read {
                file,
                path: path.to_owned(),
                source,
            };
        }
        _ => "not a valid PEM file",
    };
    Error::Pem {
        file,
        path: path.to_owned(),
        reason,
    }
}

/// The certificates in PEM `bytes` read from `path`; at least one.
fn parse_certs(
    file: File,
    path: &Path,
    bytes: &[u8],
) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(file, path, e))?;
    if certs.is_empty() {
        return Err(Error::NoCertificate {
            file,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in PEM `bytes`.
fn parse_key(path: &Path, bytes: &[u8]) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_slice(bytes).map_err(|error| match error {
        pem::Error::NoItemsFound => Error::NoKey {
            path: path.to_owned(),
        },
        error => pem_error(File::Key, path, error),
    })
}

/// Reads the certificate chain in `path`.
fn read_certs(file: File, path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    parse_certs(file, path, &read_pem(file, path)?)
}

/// Turns rustls's complaint about a certificate and key pair into ours.
fn pair_error(error: rustls::Error, cert: &Path, key: &Path) -> Error {
    match error {
        rustls::Error::InconsistentKeys(_) => Error::KeyMismatch {
            cert: cert.to_owned(),
            key: key.to_owned(),
        },
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
            Error::Unusable {
                file: File::Cert,
                path: cert.to_owned(),
                reason: error.to_string(),
            }
        }
        error => Error::Unusable {
            file: File::Key,
            path: key.to_owned(),
            reason: error.to_string(),
        },
    }
}

/// The node id a client certificate names (see the module docs), if any.
pub fn node_of(cert: &CertificateDer<'_>) -> Option<Arc<str>> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let names = cert.subject_alternative_name().ok()??;
    names
        .value
        .general_names
        .iter()
        .find_map(|name| match name {
            GeneralName::URI(uri) => node_in_uri(uri),
            _ => None,
        })
        .map(Arc::from)
}

/// The node id in `spiffe://<trust-domain>/node/<node-id>`, if `uri` has
/// that form and the id is a valid node name.
fn node_in_uri(uri: &str) -> Option<&str> {
    let (domain, path) = uri.strip_prefix("spiffe://")?.split_once('/')?;
    // SPIFFE trust domains: lowercase letters, digits, '.', '-', '_'.
    let domain_ok = !domain.is_empty()
        && domain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-_".contains(&b));
    let id = path.strip_prefix("node/")?;
    let mut v = Violations::new();
    validate::name(&mut v, "node", id);
    (domain_ok && v.is_empty()).then_some(id)
}

// ---------------------------------------------------------------------------
// Server side
// ---------------------------------------------------------------------------

/// Where the server's TLS files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFiles {
    /// The server's certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates (PEM) whose client certificates are accepted. Set,
    /// every client must present one (mutual TLS); unset, the port is TLS
    /// without client certificates.
    pub client_ca: Option<PathBuf>,
}

/// The server's TLS configuration, replaced when its files change. Cheap
/// to clone: clones share it.
#[derive(Clone)]
pub struct ServerTls(Arc<Shared>);

struct Shared {
    files: ServerFiles,
    /// The configuration new handshakes use. Read once per handshake and
    /// replaced on reload; the lock is held only to clone or swap the
    /// `Arc`, never across an `.await`, so handshakes never wait on a
    /// reload's file reads.
    current: RwLock<Arc<ServerConfig>>,
    /// The files' stamps when they were last read, which the watcher
    /// compares with theirs now. Held only to read or replace them.
    read: Mutex<[Stamp; 3]>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.0.files)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads the files and builds the configuration: ALPN `h2`, and a
    /// required client certificate from `client_ca` when it is set.
    pub fn load(files: ServerFiles) -> Result<ServerTls, Error> {
        let read = stamps(&files);
        let config = server_config(&files)?;
        Ok(ServerTls(Arc::new(Shared {
            files,
            current: RwLock::new(Arc::new(config)),
            read: Mutex::new(read),
        })))
    }

    /// The files it reads.
    pub fn files(&self) -> &ServerFiles {
        &self.0.files
    }

    /// The configuration a handshake starting now uses.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.0
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Re-reads the files. On failure the current configuration stays and
    /// the error says why.
    pub fn reload(&self) -> Result<(), Error> {
        // Stamped before reading: a change made while the files are read is
        // seen as a change next time, so it is never missed. Recorded
        // whether or not the files load: a half-written pair fails once,
        // and the write that completes it is a change of its own.
        *self.0.read.lock().unwrap_or_else(|e| e.into_inner()) = stamps(&self.0.files);
        let config = Arc::new(server_config(&self.0.files)?);
        *self.0.current.write().unwrap_or_else(|e| e.into_inner()) = config;
        Ok(())
    }

    /// Reloads when a file's modification time, length or inode changes
    /// (checked every [`WATCH_INTERVAL`]) and at once on SIGHUP, until
    /// `shutdown`. A failed reload is logged and the previous certificate
    /// stays in use; SIGHUP is never fatal while this runs.
    pub async fn watch(&self, shutdown: CancellationToken) {
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(signal) => Some(signal),
            Err(error) => {
                warn!(%error, "cannot handle SIGHUP; TLS files are re-read when they change");
                None
            }
        };
        let period = WATCH_INTERVAL;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let signalled = tokio::select! {
                _ = shutdown.cancelled() => return,
                Some(()) = recv(&mut hangup) => true,
                _ = tick.tick() => false,
            };
            let tls = self.clone();
            // Looking at and reading files blocks: keep it off the
            // runtime's worker threads.
            let reloaded = tokio::task::spawn_blocking(move || {
                (signalled || tls.changed()).then(|| tls.reload())
            })
            .await;
            let trigger = if signalled { "SIGHUP" } else { "files changed" };
            let cert = self.0.files.cert.display();
            match reloaded {
                Ok(None) => {}
                Ok(Some(Ok(()))) => info!(%cert, trigger, "reloaded the TLS certificate"),
                Ok(Some(Err(error))) => error!(
                    %error, trigger,
                    "reloading the TLS files failed; the previous certificate stays in use"
                ),
                Err(error) => error!(%error, trigger, "reloading the TLS files failed"),
            }
        }
    }

    /// Whether the files differ from when they were last read.
    fn changed(&self) -> bool {
        stamps(&self.0.files) != *self.0.read.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The next SIGHUP, or never when it cannot be handled.
async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match signal {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

/// What identifies a file's content without reading it: modification
/// time, length and inode (a file replaced by a rename within the clock's
/// resolution still differs), or nothing when it cannot be looked at.
type Stamp = Option<(Option<SystemTime>, u64, u64)>;

/// The stamps of the server's files.
fn stamps(files: &ServerFiles) -> [Stamp; 3] {
    fn stamp(path: Option<&Path>) -> Stamp {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(path?).ok()?;
        Some((meta.modified().ok(), meta.len(), meta.ino()))
    }
    [
        stamp(Some(&files.cert)),
        stamp(Some(&files.key)),
        stamp(files.client_ca.as_deref()),
    ]
}

fn server_config(files: &ServerFiles) -> Result<ServerConfig, Error> {
    let provider = provider();
    let certs = read_certs(File::Cert, &files.cert)?;
    let key = parse_key(&files.key, &read_pem(File::Key, &files.key)?)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Unusable {
            file: File::Cert,
            path: files.cert.clone(),
            reason: e.to_string(),
        })?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let unusable = |reason: String| Error::Unusable {
                file: File::ClientCa,
                path: path.clone(),
                reason,
            };
            let mut roots = RootCertStore::empty();
            for cert in read_certs(File::ClientCa, path)? {
                roots.add(cert).map_err(|e| unusable(e.to_string()))?;
            }
            // Required, not optional: without a certificate from this CA a
            // client does not get past the handshake.
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| unusable(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| pair_error(e, &files.cert, &files.key))?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// Who is at the other end of a connection. tonic puts it in the
/// extensions of every request on that connection.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The client's address.
    pub addr: Option<SocketAddr>,
    /// The node its verified client certificate names (see the module
    /// docs); `None` without TLS, without a client certificate, or when the
    /// certificate names no node.
    pub node: Option<Arc<str>>,
    /// Streams open on this connection: a fresh counter per connection,
    /// shared by its requests, for limits on streams per connection.
    pub streams: Arc<AtomicUsize>,
}

impl Peer {
    fn new(addr: Option<SocketAddr>, node: Option<Arc<str>>) -> Self {
        Self {
            addr,
            node,
            streams: Arc::new(AtomicUsize::new(0)),
        }
    }
}

/// An accepted connection, with or without TLS, and its [`Peer`] (worked
/// out once, when the connection was established).
#[derive(Debug)]
pub struct Conn {
    io: Io,
    peer: Peer,
}

#[derive(Debug)]
enum Io {
    /// A plaintext connection whose HTTP/2 preface was read (to bound the
    /// time a peer may take to send it), and how much of the preface has
    /// been handed on to the reader since.
    Plain(TcpStream, usize),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Conn {
    /// Who is at the other end.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// Whether the connection is TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self.io, Io::Tls(_))
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(_, replayed) if *replayed < PREFACE.len() => {
                // The preface read at accept time comes first.
                let n = (PREFACE.len() - *replayed).min(buf.remaining());
                buf.put_slice(&PREFACE[*replayed..*replayed + n]);
                *replayed += n;
                Poll::Ready(Ok(()))
            }
            Io::Plain(s, _) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s, _) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s, _) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s, _) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s, _) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s, _) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The connections `listener` accepts, for `Server::serve_with_incoming`:
/// when `tls` is `None`, plain TCP connections whose peer sent the HTTP/2
/// preface within `handshake_timeout`; otherwise those whose TLS handshake
/// finished within it. A peer that never finishes, sends nothing, or
/// speaks plaintext to the TLS port, is dropped then: it holds a socket
/// for that long at most.
///
/// Handshakes run concurrently, owned by the stream (dropping it cancels
/// them); each TLS one uses the configuration current when it starts. Every socket
/// gets `TCP_NODELAY`: agents' pushes and acks are small messages that
/// Nagle's algorithm would hold back. Accept errors never end the stream:
/// one connection's are skipped, a shortage of resources (EMFILE…) is
/// logged and accepting pauses briefly.
pub fn incoming(
    listener: TcpListener,
    tls: Option<ServerTls>,
    handshake_timeout: Duration,
) -> impl Stream<Item = io::Result<Conn>> + Send {
    Incoming {
        listener,
        tls,
        handshake_timeout,
        handshakes: JoinSet::new(),
        pause: None,
        next_pause: ACCEPT_PAUSE_MIN,
    }
}

struct Incoming {
    listener: TcpListener,
    tls: Option<ServerTls>,
    handshake_timeout: Duration,
    handshakes: JoinSet<Option<Conn>>,
    /// Set while accepting pauses after a resource error.
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
    next_pause: Duration,
}

impl Stream for Incoming {
    type Item = io::Result<Conn>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            // Established connections first.
            match this.handshakes.poll_join_next(cx) {
                Poll::Ready(Some(Ok(Some(conn)))) => return Poll::Ready(Some(Ok(conn))),
                Poll::Ready(Some(Ok(None))) => continue,
                Poll::Ready(Some(Err(error))) => {
                    if error.is_panic() {
                        error!(%error, "handshake task panicked");
                    }
                    continue;
                }
                // Empty or waiting: either way, on to accepting.
                Poll::Ready(None) | Poll::Pending => {}
            }
            if let Some(pause) = &mut this.pause {
                if pause.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.pause = None;
            }
            if this.handshakes.len() >= MAX_HANDSHAKES {
                // Woken when one of them ends.
                return Poll::Pending;
            }
            let (stream, addr) = match this.listener.poll_accept(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(accepted)) => accepted,
                Poll::Ready(Err(error)) if is_connection_error(&error) => {
                    debug!(%error, "a connection failed before it was accepted");
                    continue;
                }
                Poll::Ready(Err(error)) => {
                    let pause = this.next_pause;
                    error!(%error, ?pause, "accepting connections failed; pausing");
                    this.pause = Some(Box::pin(tokio::time::sleep(pause)));
                    this.next_pause = (pause * 2).min(ACCEPT_PAUSE_MAX);
                    continue;
                }
            };
            this.next_pause = ACCEPT_PAUSE_MIN;
            if let Err(error) = stream.set_nodelay(true) {
                debug!(%addr, %error, "setting TCP_NODELAY");
            }
            match &this.tls {
                None => {
                    let timeout = this.handshake_timeout;
                    this.handshakes.spawn(preface(stream, addr, timeout));
                }
                Some(tls) => {
                    let config = tls.config();
                    let timeout = this.handshake_timeout;
                    this.handshakes
                        .spawn(handshake(config, stream, addr, timeout));
                }
            }
        }
    }
}

/// Errors of one connection (it went away before it was accepted), not of
/// the listener.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

/// What every HTTP/2 client sends first (RFC 9113, section 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A plaintext connection once its peer has sent the HTTP/2 preface, within
/// `timeout`; `None` when it did not (silence, or not HTTP/2: the port
/// speaks only gRPC). hyper itself waits for a preface forever.
async fn preface(mut stream: TcpStream, addr: SocketAddr, timeout: Duration) -> Option<Conn> {
    use tokio::io::AsyncReadExt as _;
    let mut head = [0u8; PREFACE.len()];
    match tokio::time::timeout(timeout, stream.read_exact(&mut head)).await {
        Ok(Ok(_)) if &head == PREFACE => {
            let peer = Peer::new(Some(addr), None);
            Some(Conn {
                io: Io::Plain(stream, 0),
                peer,
            })
        }
        Ok(Ok(_)) => {
            debug!(%addr, "not an HTTP/2 client: connection dropped");
            None
        }
        Ok(Err(error)) => {
            debug!(%addr, %error, "connection failed before its HTTP/2 preface");
            None
        }
        Err(_) => {
            debug!(%addr, ?timeout, "no HTTP/2 preface in time: connection dropped");
            None
        }
    }
}

/// One server handshake, bounded by `timeout`; `None` when it failed.
async fn handshake(
    config: Arc<ServerConfig>,
    stream: TcpStream,
    addr: SocketAddr,
    timeout: Duration,
) -> Option<Conn> {
    let accept = tokio_rustls::TlsAcceptor::from(config).accept(stream);
    match tokio::time::timeout(timeout, accept).await {
        Ok(Ok(stream)) => {
            let node = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(<[_]>::first)
                .and_then(node_of);
            let peer = Peer::new(Some(addr), node);
            let io = Io::Tls(Box::new(stream));
            Some(Conn { io, peer })
        }
        Ok(Err(error)) => {
            // A refused certificate is worth an operator's attention; port
            // scans and plaintext clients are not.
            let refused = error
                .get_ref()
                .and_then(|e| e.downcast_ref::<rustls::Error>())
                .is_some_and(|e| {
                    matches!(
                        e,
                        rustls::Error::InvalidCertificate(_)
                            | rustls::Error::NoCertificatesPresented
                    )
                });
            if refused {
                info!(%addr, %error, "TLS handshake refused: client certificate");
            } else {
                debug!(%addr, %error, "TLS handshake failed");
            }
            None
        }
        Err(_) => {
            debug!(%addr, ?timeout, "TLS handshake timed out");
            None
        }
    }
}

// ---------------------------------------------------------------------------
// Client side
// ---------------------------------------------------------------------------

/// Where a client's TLS files are. Read at each [`ClientFiles::endpoint`]
/// call, so the next connection after a rotation uses the new files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientFiles {
    /// CA certificates (PEM) the server's certificate must chain to;
    /// required for `https://`.
    pub ca_cert: Option<PathBuf>,
    /// This client's certificate chain (PEM), for mutual TLS; with `key`.
    pub cert: Option<PathBuf>,
    /// Its private key (PEM); with `cert`.
    pub key: Option<PathBuf>,
}

impl ClientFiles {
    /// Whether no TLS file is set.
    pub fn is_empty(&self) -> bool {
        self.ca_cert.is_none() && self.cert.is_none() && self.key.is_none()
    }

    /// An endpoint for `url`: `https://` with the CA (required) and the
    /// client identity when both certificate and key are set, read from the
    /// files now; `http://` only when no TLS file is set.
    pub fn endpoint(&self, url: &str) -> Result<Endpoint, Error> {
        let address = |reason: String| Error::Address {
            url: url.to_owned(),
            reason,
        };
        let uri: Uri = url
            .parse()
            .map_err(|e| address(format!("not a URI: {e}")))?;
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") => {
                let set = [
                    (File::CaCert, &self.ca_cert),
                    (File::Cert, &self.cert),
                    (File::Key, &self.key),
                ]
                .into_iter()
                .find(|(_, path)| path.is_some());
                if let Some((file, _)) = set {
                    return Err(Error::NotHttps {
                        url: url.to_owned(),
                        file,
                    });
                }
                return Endpoint::from_shared(url.to_owned()).map_err(|e| address(e.to_string()));
            }
            _ => return Err(address("must start with http:// or https://".into())),
        }
        let Some(ca_path) = &self.ca_cert else {
            return Err(Error::CaRequired {
                url: url.to_owned(),
            });
        };
        let ca = read_pem(File::CaCert, ca_path)?;
        parse_certs(File::CaCert, ca_path, &ca)?;
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
        match (&self.cert, &self.key) {
            (Some(cert_path), Some(key_path)) => {
                let cert = read_pem(File::Cert, cert_path)?;
                let key = read_pem(File::Key, key_path)?;
                // Checked here so that a wrong pair is named now, not as a
                // handshake failure at the server.
                let chain = parse_certs(File::Cert, cert_path, &cert)?;
                let der = parse_key(key_path, &key)?;
                CertifiedKey::from_der(chain, der, &provider())
                    .map_err(|e| pair_error(e, cert_path, key_path))?;
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            (Some(_), None) => {
                return Err(Error::Incomplete {
                    present: File::Cert,
                    missing: File::Key,
                });
            }
            (None, Some(_)) => {
                return Err(Error::Incomplete {
                    present: File::Key,
                    missing: File::Cert,
                });
            }
            (None, None) => {}
        }
        Endpoint::from_shared(url.to_owned())
            .map_err(|e| address(e.to_string()))?
            .tls_config(tls)
            .map_err(|e| address(e.to_string()))
    }
}

#[cfg(test)]
mod tests;
