//! Who is calling and what they may do.
//!
//! Every gRPC call passes through [`Layer`] before any service runs. It finds
//! the caller's principal — a bearer token (`authorization: Bearer …`), or
//! else the node named by the connection's verified client certificate —
//! checks that the principal's role allows the method, counts open streams
//! against the per-connection and per-principal limits, and hands the
//! services a [`Caller`] in the request's extensions: the principal and the
//! client's address, which every write records (the audit trail) and which
//! the agent service binds to one node id.
//!
//! Token secrets are never stored: the store keeps a SHA-256 hash of each,
//! and this replica keeps the stored rows in memory ([`Tokens`]), reloaded
//! whenever the store's token epoch moves, so that a revocation made through
//! any replica is refused by every replica within a poll interval.

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use switchyard::tls::Peer;
use tonic::Status;
use tonic::body::Body;
use tracing::{info, warn};

use crate::store::{self, Role, Store, TokenRow};

pub mod service;

/// What the server enforces.
#[derive(Debug, Clone)]
pub struct Config {
    /// Whether calls must carry a credential and be allowed by its role.
    /// Off, every call is allowed and recorded as `anonymous` (or as the
    /// node its client certificate names).
    pub enforce: bool,
    /// Most Watch and Sync streams open at once on one connection.
    pub max_streams_per_connection: usize,
    /// Most Watch and Sync streams open at once for one principal, across
    /// every connection to this replica. Anonymous callers (authentication
    /// off, no client certificate) are not counted together: only the
    /// per-connection limit bounds them.
    pub max_streams_per_principal: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enforce: false,
            max_streams_per_connection: 100,
            max_streams_per_principal: 1000,
        }
    }
}

/// An authenticated identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Authentication is off.
    Anonymous,
    /// A bearer token.
    Token {
        /// Its name.
        name: Arc<str>,
        /// Its role.
        role: Role,
        /// For agent tokens, the node it speaks for.
        node: Option<Arc<str>>,
    },
    /// An agent identified by its client certificate.
    Node(Arc<str>),
}

impl Principal {
    /// The node this principal may speak for, if any.
    pub fn node(&self) -> Option<&str> {
        match self {
            Principal::Token { node, .. } => node.as_deref(),
            Principal::Node(id) => Some(id),
            Principal::Anonymous => None,
        }
    }

    /// The role it holds (a client certificate is an agent).
    fn role(&self) -> Option<Role> {
        match self {
            Principal::Token { role, .. } => Some(*role),
            Principal::Node(_) => Some(Role::Agent),
            Principal::Anonymous => None,
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Anonymous => f.write_str("anonymous"),
            Principal::Token { name, .. } => write!(f, "token/{name}"),
            Principal::Node(id) => write!(f, "node/{id}"),
        }
    }
}

/// The caller of one request, put in its extensions by [`Layer`].
#[derive(Debug, Clone)]
pub struct Caller {
    /// Who.
    pub principal: Principal,
    /// From where (`ip:port`), empty when unknown.
    pub address: String,
    /// Whether identities are enforced: when not, an agent may speak for
    /// any node.
    pub enforced: bool,
}

impl Caller {
    /// The caller of `request`; a request that did not pass through the
    /// layer (services called in-process, in tests) is anonymous.
    pub fn of<T>(request: &tonic::Request<T>) -> Caller {
        request
            .extensions()
            .get::<Caller>()
            .cloned()
            .unwrap_or(Caller {
                principal: Principal::Anonymous,
                address: String::new(),
                enforced: false,
            })
    }

    /// The store's record of this caller.
    pub fn author(&self) -> store::Author {
        store::Author::new(self.principal.to_string(), self.address.clone())
    }

    /// Checks that the caller may speak for `node` (the field `field` of
    /// its request names it): `PERMISSION_DENIED` otherwise.
    pub fn speak_for(&self, field: &str, node: &str) -> Result<(), Status> {
        if !self.enforced || self.principal.node() == Some(node) {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "{field}: {} may not speak for node {:?}",
            self.principal,
            switchyard::validate::truncate(node, 64)
        )))
    }
}

/// What a method needs of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Nothing: gRPC health, for probes and load balancers.
    Nobody,
    /// Any principal.
    Anyone,
    /// `reader` or `admin`.
    Reader,
    /// `admin`.
    Admin,
    /// An agent (token bound to a node, or a client certificate).
    Agent,
}

impl Need {
    fn of(path: &str) -> Need {
        let (service, method) = path
            .strip_prefix('/')
            .and_then(|p| p.split_once('/'))
            .unwrap_or(("", ""));
        match service {
            "grpc.health.v1.Health" => Need::Nobody,
            "switchyard.v1.OperatorService" => match method {
                "Apply" | "Delete" => Need::Admin,
                _ => Need::Reader,
            },
            "switchyard.v1.TokenService" => Need::Admin,
            "switchyard.v1.AgentService" => Need::Agent,
            // Reflection, and unknown methods (answered UNIMPLEMENTED once
            // the caller is known).
            _ => Need::Anyone,
        }
    }

    fn allows(self, role: Role) -> bool {
        match self {
            Need::Nobody | Need::Anyone => true,
            Need::Reader => matches!(role, Role::Reader | Role::Admin),
            Need::Admin => role == Role::Admin,
            Need::Agent => role == Role::Agent,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Need::Nobody | Need::Anyone => "any role",
            Need::Reader => "the reader or admin role",
            Need::Admin => "the admin role",
            Need::Agent => "an agent principal (an agent token or a node certificate)",
        }
    }
}

/// Methods that hold a stream open, counted against the stream limits.
fn is_stream(path: &str) -> bool {
    matches!(
        path,
        "/switchyard.v1.OperatorService/Watch" | "/switchyard.v1.AgentService/Sync"
    )
}

/// The prefix of every token secret, so that secret scanners can spot one.
const PREFIX: &str = "syt.";

/// A new token secret for `name`: `syt.<43 characters>.<name>`. 32 random
/// bytes make guessing hopeless, which is also why one fast hash suffices
/// to store it (a slow password hash protects low-entropy secrets).
pub fn new_secret(name: &str) -> Result<String, getrandom::Error> {
    use base64::Engine as _;
    let mut random = [0u8; 32];
    getrandom::fill(&mut random)?;
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random);
    Ok(format!("{PREFIX}{secret}.{name}"))
}

/// The stored hash of a secret.
pub fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// The token rows this replica knows, by name, reloaded when the store's
/// token epoch moves.
#[derive(Debug, Default)]
pub struct Tokens {
    // Read on every call, written on a reload: a short std lock, never held
    // across an await.
    rows: RwLock<Arc<HashMap<String, TokenRow>>>,
    epoch: Mutex<Option<u64>>,
}

impl Tokens {
    /// How many tokens are known (revoked ones included).
    pub fn len(&self) -> usize {
        self.current().len()
    }

    /// Whether no token is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn current(&self) -> Arc<HashMap<String, TokenRow>> {
        self.rows.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Reads every token from `store` now.
    pub async fn reload<S: Store>(&self, store: &S) -> store::Result<()> {
        let epoch = store.token_epoch().await?;
        let rows = store.tokens().await?;
        let rows: HashMap<_, _> = rows.into_iter().map(|r| (r.name.clone(), r)).collect();
        *self.rows.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(rows);
        *self.epoch.lock().unwrap_or_else(|e| e.into_inner()) = Some(epoch);
        Ok(())
    }

    /// Reloads when the store's token epoch differs from the one last
    /// loaded (a token was created or revoked, through any replica).
    pub async fn refresh<S: Store>(&self, store: &S) -> store::Result<()> {
        let epoch = store.token_epoch().await?;
        let known = *self.epoch.lock().unwrap_or_else(|e| e.into_inner());
        if known != Some(epoch) {
            self.reload(store).await?;
        }
        Ok(())
    }

    /// The principal of a bearer secret: its token, when it exists, is not
    /// revoked and the secret's hash matches (compared in constant time).
    fn verify(&self, secret: &str) -> Option<Principal> {
        let name = secret.strip_prefix(PREFIX)?.split_once('.')?.1;
        let rows = self.current();
        let row = rows.get(name)?;
        let matches: bool = hash(secret).ct_eq(&row.hash).into();
        if !matches || row.revoked_at_ms.is_some() {
            return None;
        }
        Some(Principal::Token {
            name: row.name.as_str().into(),
            role: row.role,
            node: (!row.node.is_empty()).then(|| row.node.as_str().into()),
        })
    }
}

/// Open streams by principal, across connections.
#[derive(Debug, Default)]
struct Streams(Mutex<HashMap<String, usize>>);

/// Holds one stream's place in the limits until the response body ends.
#[derive(Debug)]
struct Permit {
    connection: Arc<AtomicUsize>,
    /// The principal whose count this stream holds; `None` for anonymous
    /// callers, who are not counted per principal.
    principal: Option<String>,
    streams: Arc<Streams>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.connection.fetch_sub(1, Ordering::Relaxed);
        let Some(principal) = &self.principal else {
            return;
        };
        let mut open = self.streams.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(principal) {
            *n -= 1;
            if *n == 0 {
                open.remove(principal);
            }
        }
    }
}

/// The tower layer that authenticates and authorises every call.
#[derive(Debug, Clone)]
pub struct Layer {
    config: Config,
    tokens: Arc<Tokens>,
    streams: Arc<Streams>,
}

impl Layer {
    /// Checks calls against `config` and the known `tokens`.
    pub fn new(config: Config, tokens: Arc<Tokens>) -> Self {
        Self {
            config,
            tokens,
            streams: Arc::default(),
        }
    }
}

impl<S> tower_layer::Layer<S> for Layer {
    type Service = Service<S>;

    fn layer(&self, inner: S) -> Service<S> {
        Service {
            inner,
            layer: self.clone(),
        }
    }
}

/// [`Layer`]'s service.
#[derive(Debug, Clone)]
pub struct Service<S> {
    inner: S,
    layer: Layer,
}

impl Layer {
    /// Decides on one request: its caller, or the status that refuses it.
    fn admit(&self, request: &mut http::Request<Body>) -> Result<Option<Permit>, Status> {
        let path = request.uri().path();
        let need = Need::of(path);
        let stream = is_stream(path);
        let peer = request.extensions().get::<Peer>().cloned();
        let address = peer
            .as_ref()
            .and_then(|p| p.addr)
            .map(|a| a.to_string())
            .unwrap_or_default();
        let bearer = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(|v| v.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")));
        let certified = peer.as_ref().and_then(|p| p.node.clone());

        let principal = match bearer {
            Some(Some(secret)) => match self.tokens.verify(secret.trim()) {
                Some(p) => Some(p),
                None if self.config.enforce && need != Need::Nobody => {
                    return Err(Status::unauthenticated(
                        "unknown or revoked token (authorization: Bearer)",
                    ));
                }
                None => None,
            },
            Some(None) if self.config.enforce && need != Need::Nobody => {
                return Err(Status::unauthenticated(
                    "the authorization header must be `Bearer <token>`",
                ));
            }
            _ => certified.map(Principal::Node),
        };
        let principal = match (principal, self.config.enforce) {
            (Some(p), _) => p,
            (None, false) => Principal::Anonymous,
            (None, true) if need == Need::Nobody => Principal::Anonymous,
            (None, true) => {
                return Err(Status::unauthenticated(
                    "this call needs a credential: a bearer token (authorization: Bearer), \
                     or an agent's client certificate",
                ));
            }
        };
        if self.config.enforce && need != Need::Nobody {
            let allowed = principal.role().is_some_and(|r| need.allows(r));
            if !allowed {
                let method = path.rsplit('/').next().unwrap_or(path);
                let has = match principal.role() {
                    Some(role) => format!("the {} role", role.as_str()),
                    None => "no role".to_owned(),
                };
                return Err(Status::permission_denied(format!(
                    "{method} needs {}; {principal} has {has}",
                    need.describe()
                )));
            }
        }

        let permit = match (stream, &peer) {
            (true, Some(peer)) => Some(self.count_stream(peer, &principal)?),
            _ => None,
        };
        request.extensions_mut().insert(Caller {
            principal,
            address,
            enforced: self.config.enforce,
        });
        Ok(permit)
    }

    /// Takes a place for one more stream of `principal` on `peer`'s
    /// connection, or refuses it naming the limit.
    fn count_stream(&self, peer: &Peer, principal: &Principal) -> Result<Permit, Status> {
        let per_connection = self.config.max_streams_per_connection;
        if peer.streams.fetch_add(1, Ordering::Relaxed) >= per_connection {
            peer.streams.fetch_sub(1, Ordering::Relaxed);
            return Err(Status::resource_exhausted(format!(
                "more than {per_connection} Watch and Sync streams on one connection \
                 (the control plane's --max-streams-per-connection)"
            )));
        }
        // With authentication off every caller is `anonymous`: one count for
        // them all would cap the whole fleet at the per-principal limit, so
        // only the per-connection limit applies to them.
        if *principal == Principal::Anonymous {
            return Ok(Permit {
                connection: peer.streams.clone(),
                principal: None,
                streams: self.streams.clone(),
            });
        }
        let key = principal.to_string();
        let per_principal = self.config.max_streams_per_principal;
        {
            let mut open = self.streams.0.lock().unwrap_or_else(|e| e.into_inner());
            let n = open.entry(key.clone()).or_default();
            if *n >= per_principal {
                drop(open);
                peer.streams.fetch_sub(1, Ordering::Relaxed);
                warn!(%principal, limit = per_principal, "stream refused: per-principal limit");
                return Err(Status::resource_exhausted(format!(
                    "more than {per_principal} Watch and Sync streams for {principal} \
                     (the control plane's --max-streams-per-principal)"
                )));
            }
            *n += 1;
        }
        Ok(Permit {
            connection: peer.streams.clone(),
            principal: Some(key),
            streams: self.streams.clone(),
        })
    }
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S> tower_service::Service<http::Request<Body>> for Service<S>
where
    S: tower_service::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<http::Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        match self.layer.admit(&mut request) {
            Err(status) => Box::pin(async move { Ok(status.into_http()) }),
            Ok(permit) => {
                // The clone that was made ready is the one to call.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(async move {
                    let response = inner.call(request).await?;
                    Ok(match permit {
                        None => response,
                        Some(permit) => response.map(|body| Body::new(Held { body, permit })),
                    })
                })
            }
        }
    }
}

/// A response body that holds its stream's [`Permit`] until it is dropped.
struct Held {
    body: Body,
    #[allow(dead_code)] // held for its Drop
    permit: Permit,
}

impl http_body::Body for Held {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// What [`bootstrap`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrapped {
    /// The first admin token was created and its secret written to the file.
    Created,
    /// Tokens existed already: nothing was done.
    Exists,
}

/// Creates the first admin token, `bootstrap-admin`, when the store holds
/// no token, and writes its secret to `path` (mode 0600, never over an
/// existing file), in the store's transaction: several replicas starting
/// together create exactly one.
pub async fn bootstrap<S: Store>(
    store: &S,
    path: &std::path::Path,
) -> Result<Bootstrapped, store::Error> {
    const NAME: &str = "bootstrap-admin";
    let secret = new_secret(NAME).map_err(|e| store::Error::Bootstrap(e.to_string()))?;
    let row = TokenRow {
        name: NAME.into(),
        role: Role::Admin,
        node: String::new(),
        hash: hash(&secret),
        created_at_ms: store::now_ms(),
        created_by: "bootstrap".into(),
        revoked_at_ms: None,
    };
    let path = path.to_owned();
    let write = move || write_secret(&path, &secret);
    match store.bootstrap_token(row, write).await? {
        store::Bootstrap::Created => {
            info!("created the first admin token, bootstrap-admin");
            Ok(Bootstrapped::Created)
        }
        store::Bootstrap::Exists { tokens } => {
            info!(
                tokens,
                "tokens exist already: --bootstrap-token-file does nothing"
            );
            Ok(Bootstrapped::Exists)
        }
    }
}

/// Writes `secret` to a new file at `path`, readable by its owner only.
fn write_secret(path: &std::path::Path, secret: &str) -> Result<(), String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("--bootstrap-token-file {}: {e}", path.display()))?;
    file.write_all(format!("{secret}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| {
            let _ = std::fs::remove_file(path);
            format!("--bootstrap-token-file {}: {e}", path.display())
        })
}

#[cfg(test)]
mod tests;

/// What the operator allowed beyond loopback, by the flags named
/// "insecure".
#[derive(Debug, Clone, Copy, Default)]
pub struct Insecure {
    /// `--insecure-plaintext`: serve gRPC beyond loopback without TLS.
    pub plaintext: bool,
    /// `--insecure-no-auth`: serve gRPC beyond loopback with `--auth off`.
    pub no_auth: bool,
    /// `--insecure-metrics`: serve the metrics port beyond loopback.
    pub metrics: bool,
}

/// Secure by default: refuses to expose the control plane beyond loopback
/// without TLS and authentication, or its plaintext metrics port, unless a
/// flag named "insecure" says so. The message names the flag.
pub fn check_exposure(
    listen: std::net::SocketAddr,
    tls: bool,
    enforce: bool,
    metrics: Option<std::net::SocketAddr>,
    insecure: Insecure,
) -> Result<(), String> {
    let exposed = !listen.ip().is_loopback();
    if exposed && !tls && !insecure.plaintext {
        return Err(format!(
            "refusing to serve {listen} beyond loopback without TLS: pass --tls-cert and \
             --tls-key, or --insecure-plaintext to accept plaintext"
        ));
    }
    if exposed && !enforce && !insecure.no_auth {
        return Err(format!(
            "refusing to serve {listen} beyond loopback with --auth off: turn \
             authentication on, or pass --insecure-no-auth"
        ));
    }
    if let Some(addr) = metrics.filter(|a| !a.ip().is_loopback())
        && !insecure.metrics
    {
        return Err(format!(
            "refusing to serve metrics on {addr} beyond loopback (plaintext, no \
             authentication): use a loopback address, or pass --insecure-metrics"
        ));
    }
    Ok(())
}

/// Whether authentication is on when `--auth` is not given: off only on
/// loopback without TLS (the quick start and the demo need no setup).
pub fn default_enforce(listen: std::net::SocketAddr, tls: bool) -> bool {
    tls || !listen.ip().is_loopback()
}
