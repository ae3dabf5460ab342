//! The seam between the agent and the data plane it drives: a [`Driver`]
//! takes each node configuration the agent accepts and says whether its
//! proxy serves it (applied → `Ack`) or cannot (refused → `Nack`, with the
//! reason naming the field), and writes its metrics in the agent's one
//! shape (a Prometheus [`Encoder`]).
//!
//! The sync client talks to this trait only, so a driver for an external
//! proxy (Envoy through xDS, HAProxy through its runtime API) slots in
//! beside the built-in one ([`Builtin`]) without touching sync.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use switchyard::metrics::Encoder;
use switchyard::node::NodeConfig;
use switchyard::validate::Invalid;

pub mod builtin;
pub mod haproxy;

pub use builtin::Builtin;
pub use haproxy::Haproxy;

/// What [`Driver::apply`] returns. A boxed future, so that the agent holds
/// any driver as an `Arc<dyn Driver>` (one allocation per configuration
/// change, which is rare).
pub type Applying<'a> = Pin<Box<dyn Future<Output = Result<(), Invalid>> + Send + 'a>>;

/// A data plane the agent drives from the node's configuration.
pub trait Driver: Debug + Send + Sync + 'static {
    /// Its name, for logs (`builtin`, `envoy`, `haproxy`).
    fn name(&self) -> &'static str;

    /// Makes the data plane serve `config`, or refuses it: then nothing
    /// changed, the previous configuration stays live, and the reason names
    /// what it cannot take (`listener/web: cannot bind …`); the agent sends
    /// it in the `Nack`. A feature the data plane cannot express is a
    /// refusal, never silently dropped.
    fn apply<'a>(&'a self, config: &'a Arc<NodeConfig>) -> Applying<'a>;

    /// Serves `config` without refusing it: the configuration saved on
    /// disk, which was accepted before, at start (static stability). What
    /// cannot be served of it is logged and retried at the next change.
    fn restore(&self, config: &Arc<NodeConfig>);

    /// Writes the data plane's metrics (`switchyard_agent_proxy_*`).
    fn metrics(&self, enc: &mut Encoder);
}

/// Where the program a driver runs is: `bin` itself when it names a path
/// (has a `/`), else the first executable `bin` on `PATH`. `None` when
/// there is none, so that the agent refuses to start with a clear error
/// rather than Nack every configuration later.
pub fn find_program(bin: &std::path::Path) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if bin.components().count() > 1 || bin.is_absolute() {
        return executable(bin).then(|| bin.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(bin))
        .find(|p| executable(p))
}

#[cfg(test)]
mod tests {
    use super::find_program;
    use std::path::Path;

    #[test]
    fn programs_are_found_on_path_or_by_their_own_path() {
        let sh = find_program(Path::new("sh")).expect("sh is on PATH");
        assert!(sh.is_absolute(), "{sh:?}");
        assert_eq!(find_program(&sh), Some(sh.clone()));
        assert_eq!(find_program(Path::new("no-such-program-xyz")), None);
        assert_eq!(find_program(Path::new("/no/such/program")), None);
        // A directory is not a program.
        assert_eq!(find_program(Path::new("/tmp")), None);
    }
}
