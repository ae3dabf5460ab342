//! The demo's backends: tiny HTTP servers on loopback that answer every
//! request with their name and version, so that which one served a request
//! shows in the response, and `/healthz` with `ok` for the agent's checks.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// How long requests in flight may take to finish after shutdown.
const DRAIN: Duration = Duration::from_secs(5);

/// One demo backend: its identity and its bound socket.
#[derive(Debug)]
pub struct Backend {
    /// Its name, which is also its endpoint's name (`web-v1-a`).
    pub name: String,
    /// Its version label (`v1`).
    pub version: String,
    listener: TcpListener,
    addr: SocketAddr,
}

impl Backend {
    /// Binds a backend to a free port of 127.0.0.1.
    pub async fn bind(name: &str, version: &str) -> std::io::Result<Backend> {
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        Ok(Backend {
            name: name.to_owned(),
            version: version.to_owned(),
            listener,
            addr,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What it answers to any path but `/healthz`.
    pub fn greeting(name: &str, version: &str) -> String {
        format!("hello from {name} (version {version})\n")
    }

    /// Serves until `shutdown`, then lets requests in flight finish.
    pub async fn serve(self, shutdown: CancellationToken) {
        let greeting = Bytes::from(Self::greeting(&self.name, &self.version));
        let server = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        let graceful = GracefulShutdown::new();
        // Connections live in this set, so none outlives the backend.
        let mut connections = JoinSet::new();
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = self.listener.accept() => accepted,
                // Reap finished connections so the set does not grow.
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, most likely: give others a
                    // moment to close theirs rather than spin.
                    warn!(backend = %self.name, %error, "accept failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                    }
                }
            };
            let greeting = greeting.clone();
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let body = if req.uri().path() == "/healthz" {
                    Bytes::from_static(b"ok\n")
                } else {
                    greeting.clone()
                };
                async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
            });
            let conn = server
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            let conn = graceful.watch(conn);
            connections.spawn(async move {
                if let Err(error) = conn.await {
                    debug!(%error, "backend connection ended with an error");
                }
            });
        }
        drop(self.listener);
        // In-flight requests finish; idle keep-alive connections close.
        if tokio::time::timeout(DRAIN, graceful.shutdown())
            .await
            .is_err()
        {
            debug!(backend = %self.name, "drain timed out; closing the remaining connections");
        }
        connections.shutdown().await;
    }
}
