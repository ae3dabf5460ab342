//! TCP listeners: each connection is relayed, both ways, to one endpoint of
//! the listener's service; a half-close on either side is passed on. A
//! connection is closed at once when the service has `max_connections`
//! open (its relays and its HTTP connections, from this proxy).

use switchyard::resource::{Balance, HashOn};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::metrics::{Refusal, TryFailure};
use super::outlier::Outcome;
use super::workers::Lane;
use super::{Backend, Context, DRAIN};
use crate::balance::hash_key;

/// Accepts connections until `stop`, then lets open ones finish (up to the
/// drain time).
pub(super) async fn serve(
    listener: TcpListener,
    mut lane: Lane,
    ctx: Context,
    stop: CancellationToken,
) {
    let mut connections = JoinSet::new();
    while let Some((client, peer, served)) = lane.next(&listener, &stop, &mut connections).await {
        ctx.stats.connection();
        let table = ctx.table();
        let Some(Backend::Tcp(service)) = table.listeners.get(&ctx.listener) else {
            ctx.stats.refused(Refusal::NotConfigured);
            continue;
        };
        let Some(upstream) = table.upstreams.get(service).cloned() else {
            ctx.stats.refused(Refusal::UnknownService);
            continue;
        };
        let stats = ctx.stats.clone();
        connections.spawn(async move {
            let _served = served;
            let hash = match &upstream.service.balance {
                Balance::RingHash(HashOn::SourceIp) | Balance::Maglev(HashOn::SourceIp) => {
                    Some(hash_key(peer.ip().to_string().as_bytes()))
                }
                _ => None,
            };
            let pool = upstream.all.clone();
            let Some(id) = pool.pick(hash, None) else {
                stats.refused(Refusal::NoHealthyUpstream);
                return;
            };
            let limits = &upstream.shared.connections.limits;
            let Some(_slot) = limits.try_connect(upstream.service.circuit_breaker.max_connections)
            else {
                upstream.count_circuit_open();
                stats.refused(Refusal::ConnectionLimit);
                return;
            };
            let _in_flight = pool.balancer().start(id);
            let endpoint = &pool.endpoints[id];
            let addr = format!("{}:{}", endpoint.address, endpoint.port);
            let connect = TcpStream::connect(&addr);
            let mut server =
                match tokio::time::timeout(upstream.service.connect_timeout, connect).await {
                    Ok(Ok(s)) => {
                        pool.stats[id].connected();
                        upstream.record(&pool, id, Outcome::Connected);
                        s
                    }
                    _ => {
                        debug!(%addr, "connect failed");
                        pool.stats[id].failed(TryFailure::Connect);
                        upstream.record(&pool, id, Outcome::ConnectFailure);
                        stats.refused(Refusal::Connect);
                        return;
                    }
                };
            let _ = server.set_nodelay(true);
            let mut client = client;
            let _ = client.set_nodelay(true);
            // copy_bidirectional shuts down each write side when its read
            // side reaches end of stream: half-closes pass through.
            if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut server).await {
                debug!(%error, "relay ended with an error");
            }
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(DRAIN, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    connections.shutdown().await;
}
