//! Upstream HTTP connections: per endpoint and proxy thread, a stack of idle
//! keep-alive HTTP/1.1 connections or one multiplexed HTTP/2 connection (a
//! connection is used by the thread whose runtime drives it); per service,
//! the circuit breaker's connection limits (`max_connections`,
//! `max_pending_requests`).
//!
//! The proxy keeps its own pool rather than a general-purpose pooled client
//! because it already knows which endpoint a request goes to: a checkout is
//! a pop from that endpoint's stack, and an HTTP/1.1 connection goes back
//! the moment its response body has been read to the end (see [`h1`]: no
//! task per connection, nothing buffered while idle). It also needs
//! per-service limits that a client keyed by authority cannot count.
//!
//! A request waits for a connection only when the service has
//! `max_connections` open and none of them is idle on its endpoint (on any
//! proxy thread): it is then *pending* (refused at once past
//! `max_pending_requests`), and takes the first connection that comes back
//! to its endpoint, or the place of one that closes, or of an idle one of
//! another endpoint, which is closed for it. A request still waiting after
//! the connect timeout is refused like one over `max_pending_requests`
//! (the endpoint is not blamed for it).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::client::conn::http2;
use hyper::http::uri::{Authority, PathAndQuery, Scheme};
use hyper::{Request, Response, Uri};
use hyper_util::rt::TokioIo;
use switchyard::resource::Service;
use tokio::net::TcpStream;
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::body::{Inbound, Outbound, Versioned};
use super::error::{Error, Kind, Origin, Retry};
use super::h1;
use super::limit::{Pending, Slot, Slots};
use super::workers;

/// What identifies an endpoint's connections: address, port, HTTP/2, and the
/// number of proxy threads.
type ConnsKey = (String, u16, bool, usize);

/// The connections of one service: its limits, and the connections of each
/// of its endpoints by address.
#[derive(Debug, Default)]
pub(crate) struct Connections {
    pub(crate) limits: Arc<Slots>,
    by_address: Mutex<HashMap<ConnsKey, Arc<Conns>>>,
    /// The service's idle timeout in milliseconds, as its newest
    /// configuration says (set before it has any connection).
    idle_timeout_ms: AtomicU64,
}

impl Connections {
    /// The connections to each of `endpoints` (address, port), in order,
    /// for `threads` proxy threads, forgetting (and so closing, once idle)
    /// those of other addresses.
    pub(super) fn sync<'a>(
        &self,
        endpoints: impl Iterator<Item = (&'a str, u16)>,
        http2: bool,
        threads: usize,
    ) -> Vec<Arc<Conns>> {
        let mut map = self.by_address.lock().expect("connections");
        let wanted: Vec<_> = endpoints
            .map(|(address, port)| {
                let key = (address.to_owned(), port, http2, threads);
                map.entry(key)
                    .or_insert_with(|| Arc::new(Conns::new(address, port, http2, threads)))
                    .clone()
            })
            .collect();
        map.retain(|_, c| wanted.iter().any(|w| Arc::ptr_eq(w, c)));
        wanted
    }

    /// Sets how long idle connections are kept (from the service's
    /// configuration).
    pub(super) fn set_idle_timeout(&self, timeout: Duration) {
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self.idle_timeout_ms.store(ms, Ordering::Relaxed);
    }

    /// How long idle connections are kept.
    fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms.load(Ordering::Relaxed))
    }

    /// Closes the idle HTTP/1.1 connections that `keep` refuses (given
    /// when each went idle and the service's idle timeout), and the closed
    /// ones; with `keep` refusing all, the HTTP/2 ones too (they close when
    /// no request uses them).
    pub(super) fn close_idle(&self, keep: impl Fn(Instant, Duration) -> bool) {
        let timeout = self.idle_timeout();
        let keep = |since| keep(since, timeout);
        for c in self.all() {
            for idle in &c.idle {
                idle.lock()
                    .expect("idle")
                    .retain(|i| i.conn.is_open() && keep(i.since));
            }
            if !keep(Instant::now()) {
                for shared in &c.shared {
                    shared.lock().expect("http2").take();
                }
            }
        }
    }

    /// Closes one idle HTTP/1.1 connection of another endpoint than
    /// `except`, if there is one, so that a pending request can open one.
    fn evict_idle(&self, except: &Conns) {
        let all = self.all();
        let others = all.iter().filter(|c| !std::ptr::eq(c.as_ref(), except));
        for idle in others.flat_map(|c| c.idle.iter()) {
            if idle.lock().expect("idle").pop_front().is_some() {
                return;
            }
        }
    }

    /// Every endpoint's connections (a copy, so that no lock is held while
    /// they are worked on).
    fn all(&self) -> Vec<Arc<Conns>> {
        self.by_address
            .lock()
            .expect("connections")
            .values()
            .cloned()
            .collect()
    }
}

/// An idle HTTP/1.1 connection.
struct Idle {
    conn: h1::client::Conn,
    since: Instant,
}

/// The connections to one endpoint.
pub(crate) struct Conns {
    host: String,
    port: u16,
    authority: Option<Authority>,
    http2: bool,
    /// Per proxy thread, idle HTTP/1.1 connections, the most recently used
    /// at the back.
    idle: Box<[Mutex<VecDeque<Idle>>]>,
    /// Per proxy thread, the HTTP/2 connection its requests share.
    shared: Box<[Mutex<Option<http2::SendRequest<Outbound>>>]>,
    /// Per proxy thread, held by the request opening its HTTP/2 connection:
    /// a burst of first requests waits for that one instead of each
    /// opening its own. An async mutex, since it is held while connecting.
    opening: Box<[tokio::sync::Mutex<()>]>,
}

impl std::fmt::Debug for Conns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conns")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("http2", &self.http2)
            .finish_non_exhaustive()
    }
}

/// Where a connection lent to one HTTP/1.1 exchange goes back when its
/// response body has been read to the end.
pub(super) struct Lease {
    conns: Arc<Conns>,
    limits: Arc<Slots>,
    /// The proxy thread whose runtime the connection's socket is
    /// registered with.
    thread: usize,
}

impl h1::client::Release for Lease {
    fn release(self, conn: h1::client::Conn) {
        self.conns.idle[self.thread]
            .lock()
            .expect("idle")
            .push_back(Idle {
                conn,
                since: Instant::now(),
            });
        self.limits.wake_pending();
    }
}

/// A response body from an endpoint.
pub(crate) type Upstream = Versioned<h1::client::Body<Inbound, Lease>>;

/// An executor for HTTP/2 connection tasks whose tasks the proxy can wait
/// for at shutdown.
#[derive(Clone)]
struct Tracked(TaskTracker);

impl<F> hyper::rt::Executor<F> for Tracked
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        self.0.spawn(fut);
    }
}

impl Conns {
    fn new(host: &str, port: u16, http2: bool, threads: usize) -> Conns {
        let threads = threads.max(1);
        Conns {
            host: host.to_owned(),
            port,
            authority: Authority::try_from(format!("{host}:{port}")).ok(),
            http2,
            idle: (0..threads).map(|_| Mutex::default()).collect(),
            shared: (0..threads).map(|_| Mutex::default()).collect(),
            opening: (0..threads).map(|_| tokio::sync::Mutex::new(())).collect(),
        }
    }

    /// The URI of a request to this endpoint for `path`: origin form for
    /// HTTP/1.1, absolute for HTTP/2 (whose pseudo-headers need scheme and
    /// authority), with the client's `authority`, or the endpoint's when
    /// there is none.
    pub(super) fn uri(&self, path: PathAndQuery, authority: Option<&Authority>) -> Option<Uri> {
        let mut parts = hyper::http::uri::Parts::default();
        if self.http2 {
            parts.scheme = Some(Scheme::HTTP);
            parts.authority = Some(authority.or(self.authority.as_ref())?.clone());
        }
        parts.path_and_query = Some(path);
        Uri::from_parts(parts).ok()
    }

    /// The endpoint's authority (`host:port`), for a request with no Host.
    pub(super) fn authority(&self) -> Option<&Authority> {
        self.authority.as_ref()
    }

    /// Whether requests go to the endpoint over HTTP/2.
    pub(super) fn is_http2(&self) -> bool {
        self.http2
    }

    /// Sends `req` on a connection to this endpoint, reusing an idle one
    /// when there is one, within `config`'s connect timeout and connection
    /// limits. An HTTP/1.1 connection goes back to the endpoint when the
    /// response body has been read to its end.
    pub(super) async fn send(
        self: &Arc<Self>,
        service: &Connections,
        config: &Service,
        tasks: &TaskTracker,
        mut req: Request<Outbound>,
    ) -> Result<Response<Upstream>, Error> {
        let limits = &service.limits;
        let thread = workers::index().min(self.idle.len() - 1);
        let (idle, shared) = (&self.idle[thread], &self.shared[thread]);
        let wait_until = tokio::time::Instant::now() + config.connect_timeout;
        let max_connections = config
            .circuit_breaker
            .max_connections
            .map_or(usize::MAX, |m| m as usize);
        let idle_timeout = service.idle_timeout();
        let mut pending = None;
        loop {
            // Held from finding no HTTP/2 connection to storing a new one.
            let mut opening = None;
            // At the connection limit, another thread's connection is
            // better than none (its runtime keeps driving it).
            let anywhere = limits.open() >= max_connections;
            if self.http2 {
                let mut current = shared.lock().expect("http2").clone();
                if anywhere && current.as_ref().is_none_or(|tx| tx.is_closed()) {
                    current = self.shared.iter().find_map(|s| {
                        s.lock()
                            .expect("http2")
                            .clone()
                            .filter(|tx| !tx.is_closed())
                    });
                }
                if let Some(mut tx) = current.filter(|tx| !tx.is_closed()) {
                    return match tx.try_send_request(req).await {
                        Ok(resp) => Ok(resp.map(Upstream::Http2)),
                        Err(mut e) => match e.take_message() {
                            // Closed before it was sent: a new connection.
                            Some(r) => {
                                shared.lock().expect("http2").take();
                                req = r;
                                continue;
                            }
                            None => Err(Error::http2(
                                e.into_error(),
                                Origin::Upstream,
                                Retry::Idempotent,
                            )),
                        },
                    };
                }
                // None open on this thread: open one, or wait for the
                // request opening it and look again.
                match self.opening[thread].try_lock() {
                    Ok(guard) => opening = Some(guard),
                    Err(_) => {
                        let opened = self.opening[thread].lock();
                        if tokio::time::timeout_at(wait_until, opened).await.is_err() {
                            return Err(Error::upstream(Kind::Connect, Retry::Safe));
                        }
                        continue;
                    }
                }
                // Another request may have stored one meanwhile.
                if shared
                    .lock()
                    .expect("http2")
                    .as_ref()
                    .is_some_and(|tx| !tx.is_closed())
                {
                    continue;
                }
            } else if let Some((conn, home)) = checkout(idle, idle_timeout)
                .map(|conn| (conn, thread))
                .or_else(|| {
                    anywhere
                        .then(|| {
                            self.idle
                                .iter()
                                .enumerate()
                                .find_map(|(t, other)| Some((checkout(other, idle_timeout)?, t)))
                        })
                        .flatten()
                })
            {
                return self.exchange(conn, home, limits, req).await;
            }
            if let Some(slot) = limits.try_connect(config.circuit_breaker.max_connections) {
                drop(pending.take());
                // Opening a connection is the rare path: boxed, so that
                // its state does not enlarge every request's.
                let stream = Box::pin(self.connect(wait_until)).await?;
                if self.http2 {
                    let tx = Box::pin(handshake(stream, slot, tasks)).await?;
                    *shared.lock().expect("http2") = Some(tx);
                    continue;
                }
                return self
                    .exchange(h1::client::Conn::new(stream, slot), thread, limits, req)
                    .await;
            }
            // A request waiting for a free connection does not keep others
            // of its thread from using one opened meanwhile.
            drop(opening);
            // At max_connections: wait, if the pending limit allows.
            if pending.is_none() {
                let max = config
                    .circuit_breaker
                    .max_pending_requests
                    .map_or(usize::MAX, |m| m as usize);
                let waiting =
                    limits
                        .pending
                        .fetch_update(Ordering::SeqCst, Ordering::Relaxed, |n| {
                            (n < max).then_some(n + 1)
                        });
                if waiting.is_err() {
                    return Err(Error::new(Kind::Overflow, Origin::Internal, Retry::Never));
                }
                pending = Some(Pending(limits));
            }
            let freed = limits.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            // Checked again now that a wake-up cannot be missed.
            let ready = if self.http2 {
                self.shared.iter().any(|s| {
                    s.lock()
                        .expect("http2")
                        .as_ref()
                        .is_some_and(|tx| !tx.is_closed())
                })
            } else {
                self.idle
                    .iter()
                    .any(|i| !i.lock().expect("idle").is_empty())
            };
            if ready || limits.open() < max_connections {
                continue;
            }
            service.evict_idle(self);
            if tokio::time::timeout_at(wait_until, freed).await.is_err() {
                // Not the endpoint's failure: the service is at its limit.
                return Err(Error::new(Kind::Overflow, Origin::Internal, Retry::Never));
            }
        }
    }

    /// Opens a connection to the endpoint, by `wait_until` (at least a
    /// millisecond from now).
    async fn connect(&self, wait_until: tokio::time::Instant) -> Result<TcpStream, Error> {
        let left = wait_until.saturating_duration_since(tokio::time::Instant::now());
        let connecting = TcpStream::connect((self.host.as_str(), self.port));
        match tokio::time::timeout(left.max(Duration::from_millis(1)), connecting).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                Ok(stream)
            }
            Ok(Err(error)) => {
                debug!(host = %self.host, port = self.port, %error, "connect failed");
                Err(Error::upstream(Kind::Connect, Retry::Safe))
            }
            Err(_) => Err(Error::upstream(Kind::Connect, Retry::Safe)),
        }
    }

    /// Sends `req` on `conn`, an HTTP/1.1 connection registered with proxy
    /// thread `thread`'s runtime, where it goes back once the response has
    /// been read.
    async fn exchange(
        self: &Arc<Self>,
        conn: h1::client::Conn,
        thread: usize,
        limits: &Arc<Slots>,
        req: Request<Outbound>,
    ) -> Result<Response<Upstream>, Error> {
        let lease = Lease {
            conns: self.clone(),
            limits: limits.clone(),
            thread,
        };
        match conn.send(req, lease).await {
            Ok(resp) => Ok(resp.map(Upstream::Http1)),
            Err(error) => {
                debug!(host = %self.host, port = self.port, %error, "exchange failed");
                Err(error)
            }
        }
    }
}

/// Starts HTTP/2 on `stream`, counted by `slot`, whose task (driving the
/// connection) `tasks` tracks; the handle to send requests on it.
async fn handshake(
    stream: TcpStream,
    slot: Slot,
    tasks: &TaskTracker,
) -> Result<http2::SendRequest<Outbound>, Error> {
    let exec = Tracked(tasks.clone());
    let (tx, conn) = http2::handshake(exec, TokioIo::new(stream))
        .await
        .map_err(|_| Error::upstream(Kind::Connect, Retry::Safe))?;
    tasks.spawn(async move {
        let _slot = slot;
        if let Err(error) = conn.await {
            debug!(%error, "upstream connection ended with an error");
        }
    });
    Ok(tx)
}

/// The most recently used idle connection of `idle` that is still open and
/// idle for less than `timeout`. The least recently used one is dropped if
/// it is not (one per checkout, so that old connections do not pile up
/// under a stack that is never emptied).
fn checkout(idle: &Mutex<VecDeque<Idle>>, timeout: Duration) -> Option<h1::client::Conn> {
    let mut idle = idle.lock().expect("idle");
    let usable = |c: &Idle| c.since.elapsed() < timeout && c.conn.is_open();
    if idle.front().is_some_and(|c| !usable(c)) {
        idle.pop_front();
    }
    while let Some(conn) = idle.pop_back() {
        if usable(&conn) {
            return Some(conn.conn);
        }
    }
    None
}
