//! The proxy's threads: one single-threaded tokio runtime per thread, each
//! accepting on every listener and serving its connections from start to
//! end, with its own idle upstream connections (the thread-per-core model
//! of nginx and Envoy).
//!
//! A single-threaded runtime spends measurably less CPU per proxied
//! request than a work-stealing one (no cross-thread wake-ups, no atomic
//! task hand-offs; see BENCHMARKS.md), and a connection is served by one
//! thread from start to end. Every thread accepts on its own copy of each
//! listening socket, but whichever wakes first takes the connection, which
//! left one thread with twice the connections of another; so the thread
//! that accepts a connection hands it to the thread serving the fewest of
//! that listener's connections ([`Lane`]), as Envoy's exact balancing does.
//! A thread woken by its listener takes every connection waiting in the
//! listen queue before it serves any (as nginx's `multi_accept` does), so
//! that a burst empties the queue at once instead of a connection per
//! wake-up.

use std::cell::Cell;
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

thread_local! {
    /// This thread's index among the proxy's threads (0 elsewhere).
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The index of the proxy thread running the caller (0 outside them), for
/// per-thread state such as idle connections.
pub(super) fn index() -> usize {
    INDEX.with(Cell::get)
}

/// The proxy's threads, or the caller's runtime when there are none.
pub(super) struct Workers {
    handles: Vec<Handle>,
    stop: CancellationToken,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    /// Starts `n` threads; with 0, the proxy runs on the caller's runtime.
    /// On an error, the threads started already stop.
    pub(super) fn start(n: usize) -> io::Result<Workers> {
        let stop = CancellationToken::new();
        let on_error = stop.clone().drop_guard();
        let workers = Workers::spawn(n, &stop)?;
        on_error.disarm();
        Ok(workers)
    }

    fn spawn(n: usize, stop: &CancellationToken) -> io::Result<Workers> {
        let mut workers = Workers {
            handles: Vec::with_capacity(n),
            stop: stop.clone(),
            threads: Vec::with_capacity(n),
        };
        for i in 0..n {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            workers.handles.push(runtime.handle().clone());
            let stop = stop.clone();
            let thread = std::thread::Builder::new()
                .name(format!("proxy-{i}"))
                .spawn(move || {
                    INDEX.with(|c| c.set(i));
                    runtime.block_on(stop.cancelled());
                })?;
            workers.threads.push(thread);
        }
        Ok(workers)
    }

    /// How many copies of per-thread state to keep (at least one).
    pub(super) fn count(&self) -> usize {
        self.handles.len().max(1)
    }

    /// Runs `task(value)` on each thread, with the values in thread order
    /// (one on the caller's runtime when there are no threads), in `set`.
    pub(super) fn spawn_each<V, F, T>(&self, set: &mut JoinSet<()>, values: Vec<V>, mut task: T)
    where
        T: FnMut(V) -> F,
        F: Future<Output = ()> + Send + 'static,
    {
        let mut values = values.into_iter();
        if self.handles.is_empty() {
            if let Some(value) = values.next() {
                set.spawn(task(value));
            }
            return;
        }
        for (handle, value) in self.handles.iter().zip(values) {
            set.spawn_on(task(value), handle);
        }
    }

    /// Stops the threads once their tasks are done with, and waits for
    /// them.
    pub(super) async fn stop(self) {
        self.stop.cancel();
        let threads = self.threads;
        let joined = tokio::task::spawn_blocking(move || {
            for t in threads {
                if t.join().is_err() {
                    warn!("a proxy thread panicked");
                }
            }
        })
        .await;
        if let Err(error) = joined {
            warn!(%error, "waiting for the proxy threads failed");
        }
    }
}

/// A connection accepted by one thread for another to serve, already
/// counted as that thread's.
type Handoff = (std::net::TcpStream, SocketAddr, Served);

/// A connection for this thread to serve, counted as open on it until the
/// [`Served`] guard drops.
pub(super) type Accepted = (TcpStream, SocketAddr, Served);

/// One thread's share of a listener: where connections handed to it
/// arrive, and every thread's count of the listener's open connections.
#[derive(Debug)]
pub(super) struct Lane {
    index: usize,
    /// Open connections of this listener, by thread (shared with the
    /// listener's metrics).
    open: Arc<[AtomicUsize]>,
    /// Whether each thread still serves the listener (its lane is alive).
    alive: Arc<[AtomicBool]>,
    others: Arc<[mpsc::UnboundedSender<Handoff>]>,
    inbox: mpsc::UnboundedReceiver<Handoff>,
    /// Connections accepted and kept, not yet served (the rest of a
    /// burst).
    kept: VecDeque<Accepted>,
}

impl Lane {
    /// One lane per counter of `open`, the listener's open connections by
    /// thread.
    pub(super) fn all(open: Arc<[AtomicUsize]>) -> Vec<Lane> {
        let (senders, inboxes): (Vec<_>, Vec<_>) =
            (0..open.len()).map(|_| mpsc::unbounded_channel()).unzip();
        let others: Arc<[_]> = senders.into();
        let alive: Arc<[AtomicBool]> = (0..open.len()).map(|_| AtomicBool::new(true)).collect();
        inboxes
            .into_iter()
            .enumerate()
            .map(|(index, inbox)| Lane {
                index,
                open: open.clone(),
                alive: alive.clone(),
                others: others.clone(),
                inbox,
                kept: VecDeque::new(),
            })
            .collect()
    }

    /// The next connection this thread serves, or `None` once `stop` is
    /// cancelled: one it accepted and keeps, or one another thread handed
    /// it. Finished connection tasks are reaped meanwhile, so the set holds
    /// only open connections.
    pub(super) async fn next(
        &mut self,
        listener: &TcpListener,
        stop: &CancellationToken,
        connections: &mut JoinSet<()>,
    ) -> Option<Accepted> {
        loop {
            if let Some(mine) = self.kept.pop_front() {
                return Some(mine);
            }
            tokio::select! {
                _ = stop.cancelled() => return None,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        if let Some(mine) = self.place(stream, peer) {
                            self.kept.push_back(mine);
                        }
                        self.accept_waiting(listener).await;
                    }
                    Err(error) => {
                        // E.g. out of file descriptors: back off instead of
                        // spinning on the error.
                        debug!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                Some((stream, peer, served)) = self.inbox.recv() => match TcpStream::from_std(stream) {
                    Ok(stream) => return Some((stream, peer, served)),
                    Err(error) => debug!(%error, "cannot take over a connection"),
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    }

    /// Accepts the connections waiting in `listener`'s queue until it is
    /// empty, keeping or handing over each. Bounded by tokio's task budget:
    /// past it, the rest waits for the next turn (connections already
    /// accepted are served meanwhile).
    async fn accept_waiting(&mut self, listener: &TcpListener) {
        std::future::poll_fn(|cx| {
            loop {
                match listener.poll_accept(cx) {
                    Poll::Ready(Ok((stream, peer))) => {
                        if let Some(mine) = self.place(stream, peer) {
                            self.kept.push_back(mine);
                        }
                    }
                    // An error is met again by the next accept, which
                    // backs off.
                    Poll::Ready(Err(_)) | Poll::Pending => return Poll::Ready(()),
                }
            }
        })
        .await;
    }

    /// Keeps a connection this thread accepted, or hands it to the thread
    /// serving the fewest of the listener's connections when that is not
    /// this one. The connection counts as the chosen thread's at once, so
    /// that a burst of accepts does not send them all to one thread before
    /// it has taken any.
    fn place(&self, stream: TcpStream, peer: SocketAddr) -> Option<Accepted> {
        let load = |i: usize| self.open[i].load(Ordering::Relaxed);
        let target = (0..self.open.len())
            .filter(|&i| i == self.index || self.alive[i].load(Ordering::Relaxed))
            .min_by_key(|&i| (load(i), i != self.index))
            .unwrap_or(self.index);
        if target == self.index || load(target) >= load(self.index) {
            return Some((stream, peer, self.serve(self.index)));
        }
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(error) => {
                debug!(%error, "cannot hand over a connection");
                return None;
            }
        };
        match self.others[target].send((stream, peer, self.serve(target))) {
            Ok(()) => None,
            // That thread stopped serving the listener: keep it.
            Err(mpsc::error::SendError((stream, peer, _))) => TcpStream::from_std(stream)
                .ok()
                .map(|s| (s, peer, self.serve(self.index))),
        }
    }

    /// Counts a connection as open on thread `index` until the guard drops.
    fn serve(&self, index: usize) -> Served {
        self.open[index].fetch_add(1, Ordering::Relaxed);
        Served {
            open: self.open.clone(),
            index,
        }
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        // No more connections for this thread (e.g. its listener task could
        // not start): the others stop trying to hand it any.
        self.alive[self.index].store(false, Ordering::Relaxed);
    }
}

/// One open connection in its thread's count.
#[derive(Debug)]
pub(super) struct Served {
    open: Arc<[AtomicUsize]>,
    index: usize,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.open[self.index].fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two lanes of a listener, its open-connection counters, and three
    /// client connections waiting in its accept queue.
    struct Setup {
        listener: TcpListener,
        open: Arc<[AtomicUsize]>,
        first: Lane,
        second: Lane,
        clients: Vec<TcpStream>,
        stop: CancellationToken,
        set: JoinSet<()>,
    }

    async fn setup() -> Setup {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open: Arc<[AtomicUsize]> = (0..2).map(|_| AtomicUsize::new(0)).collect();
        let mut lanes = Lane::all(open.clone());
        let (second, first) = (lanes.pop().unwrap(), lanes.pop().unwrap());
        let mut clients = vec![];
        for _ in 0..3 {
            clients.push(TcpStream::connect(addr).await.unwrap());
        }
        Setup {
            listener,
            open,
            first,
            second,
            clients,
            stop: CancellationToken::new(),
            set: JoinSet::new(),
        }
    }

    fn loads(open: &[AtomicUsize]) -> Vec<usize> {
        open.iter().map(|n| n.load(Ordering::Relaxed)).collect()
    }

    /// Three connections accepted by lane 0 of two: it keeps the first,
    /// hands the second to the idle lane 1, and keeps the third (a tie).
    #[tokio::test]
    async fn the_accepting_lane_hands_over_to_the_least_loaded() {
        let mut t = setup().await;
        let mut kept = vec![];
        while kept.len() < 2 {
            kept.push(
                t.first
                    .next(&t.listener, &t.stop, &mut t.set)
                    .await
                    .unwrap(),
            );
        }
        let handed = t
            .second
            .next(&t.listener, &t.stop, &mut t.set)
            .await
            .unwrap();
        assert_eq!(
            handed.0.peer_addr().unwrap(),
            t.clients[1].local_addr().unwrap()
        );
        assert_eq!(loads(&t.open), vec![2, 1]);
        drop((kept, handed));
        assert_eq!(
            loads(&t.open),
            vec![0, 0],
            "counted until the connections end"
        );
    }

    /// A lane that is gone (its thread no longer serves the listener)
    /// loses no connection: the accepting lane keeps every one.
    #[tokio::test]
    async fn a_gone_lane_loses_no_connection() {
        let mut t = setup().await;
        drop(t.second);
        let mut kept = vec![];
        for _ in 0..3 {
            let next = tokio::time::timeout(
                Duration::from_secs(5),
                t.first.next(&t.listener, &t.stop, &mut t.set),
            );
            kept.push(next.await.expect("kept, not handed over").unwrap());
        }
        assert_eq!(loads(&t.open), vec![3, 0]);
    }
}
