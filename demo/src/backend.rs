//! The demo's backends: tiny HTTP servers on loopback that answer every
//! request with their name and version, so that which one served a request
//! shows in the response, and `/healthz` with `ok` for the agent's checks.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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
        let handle = move |req: Request<hyper::body::Incoming>| {
            let body = if req.uri().path() == "/healthz" {
                Bytes::from_static(b"ok\n")
            } else {
                greeting.clone()
            };
            async move { Response::new(Full::new(body)) }
        };
        switchyard::http::serve(self.listener, handle, shutdown).await;
    }
}
