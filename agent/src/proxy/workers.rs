//! The proxy's threads: one single-threaded tokio runtime per thread, each
//! accepting on every listener and serving its connections from start to
//! end, with its own idle upstream connections (the thread-per-core model
//! of nginx and Envoy).
//!
//! A single-threaded runtime spends measurably less CPU per proxied
//! request than a work-stealing one (no cross-thread wake-ups, no atomic
//! task hand-offs; see BENCHMARKS.md), and a connection never moves between
//! threads. Every thread accepts on its own copy of each listening socket;
//! the kernel hands each new connection to one of them.

use std::cell::Cell;
use std::future::Future;
use std::io;

use tokio::runtime::Handle;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::warn;

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

    /// Runs one `task()` on each thread (one on the caller's runtime when
    /// there are none), in `set`.
    pub(super) fn spawn_each<F, T>(&self, set: &mut JoinSet<()>, mut task: T)
    where
        T: FnMut() -> F,
        F: Future<Output = ()> + Send + 'static,
    {
        if self.handles.is_empty() {
            set.spawn(task());
        }
        for handle in &self.handles {
            set.spawn_on(task(), handle);
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
