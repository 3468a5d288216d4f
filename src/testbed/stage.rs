//! A throwaway PostgreSQL and the sandbox, started and stopped together: what `pgcapi demo` and
//! `pgcapi bench` run on.

use crate::testbed::cluster::{Cluster, ClusterOptions};
use crate::testbed::sandbox::{Sandbox, SandboxHandle};

/// A running cluster and sandbox; [`Stage::stop`] ends both (the cluster's directory goes with it).
pub struct Stage {
    /// The throwaway cluster.
    pub cluster: Cluster,
    /// The sandbox, on a free port of 127.0.0.1.
    pub sandbox: SandboxHandle,
}

impl Stage {
    /// Starts a cluster with `options` and the sandbox; the errors read as a user of either command
    /// needs them.
    pub async fn start(options: ClusterOptions) -> Result<Stage, String> {
        // initdb and pg_ctl block: off the runtime's worker threads.
        let cluster = tokio::task::spawn_blocking(|| Cluster::start(options))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("starting a throwaway PostgreSQL: {e}"))?;
        let sandbox = Sandbox::start("127.0.0.1:0".parse().expect("address"))
            .await
            .map_err(|e| format!("starting the sandbox: {e}"))?;
        Ok(Stage { cluster, sandbox })
    }

    /// Stops the sandbox, then the cluster.
    pub async fn stop(self) {
        self.sandbox.shutdown().await;
        drop(self.cluster);
    }
}
