//! The built-in proxy (`switchyard-proxy`) as the agent's default driver:
//! a configuration is refused when one of its new listeners cannot bind on
//! this node, and otherwise handed to the proxy on a `watch` channel, which
//! the proxy follows (it compiles each version once and swaps it in
//! atomically; traffic in flight finishes on the version it started with).

use std::future::Future;
use std::sync::Arc;

use switchyard::metrics::Encoder;
use switchyard::node::NodeConfig;
use switchyard::validate::Invalid;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Applying, Driver};

/// The proxy's own check that every new listener can bind.
type Check = Box<dyn Fn(&NodeConfig) -> Result<(), Invalid> + Send + Sync>;

/// The built-in proxy, driven.
pub struct Builtin {
    /// The proxy's own check that every new listener can bind.
    check: Check,
    /// What the proxy serves: a `watch`, since the proxy only ever needs
    /// the newest configuration, never each one in between.
    config: watch::Sender<Arc<NodeConfig>>,
    metrics: switchyard_proxy::Metrics,
}

impl std::fmt::Debug for Builtin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builtin").finish_non_exhaustive()
    }
}

impl Builtin {
    /// Drives `proxy`. The future returned runs it until `shutdown` (and
    /// drains it): its caller owns it, and it serves nothing until a
    /// configuration is applied or restored.
    pub fn new(
        proxy: switchyard_proxy::Builtin,
        shutdown: CancellationToken,
    ) -> (Builtin, impl Future<Output = ()> + Send + 'static) {
        let check = proxy.preflight();
        let metrics = proxy.metrics();
        let (config, serve) = watch::channel(Arc::new(NodeConfig::default()));
        let driver = Builtin {
            check: Box::new(check),
            config,
            metrics,
        };
        (driver, proxy.run(serve, shutdown))
    }
}

impl Driver for Builtin {
    fn name(&self) -> &'static str {
        "builtin"
    }

    fn apply<'a>(&'a self, config: &'a Arc<NodeConfig>) -> Applying<'a> {
        Box::pin(async move {
            (self.check)(config)?;
            self.config.send_replace(config.clone());
            Ok(())
        })
    }

    fn restore(&self, config: &Arc<NodeConfig>) {
        self.config.send_replace(config.clone());
    }

    fn metrics(&self, enc: &mut Encoder) {
        self.metrics.encode(enc);
    }
}

#[cfg(test)]
mod tests;
