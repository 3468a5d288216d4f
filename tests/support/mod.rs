//! Test harness: throwaway PostgreSQL clusters, one database per test, and small SQL helpers.

#![allow(dead_code)]

use pgcapi::cluster::{Cluster, ClusterOptions};
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio_postgres::{Client, NoTls};

/// A database of its own in a throwaway cluster of its own.
pub struct TestDb {
    /// The cluster; stopped and deleted when the test ends.
    pub cluster: Cluster,
    /// The database name.
    pub name: String,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

impl TestDb {
    /// Starts a fresh cluster and creates a database in it.
    pub async fn start() -> TestDb {
        Self::start_with(ClusterOptions::default()).await
    }

    /// Starts a fresh cluster with `options` and creates a database in it.
    pub async fn start_with(options: ClusterOptions) -> TestDb {
        let cluster = tokio::task::spawn_blocking(move || Cluster::start(options))
            .await
            .expect("cluster start task")
            .unwrap_or_else(|e| panic!("starting a throwaway PostgreSQL cluster: {e}"));
        let name = format!("t{}", COUNTER.fetch_add(1, Ordering::SeqCst));
        let admin = connect_url(&cluster.url("postgres")).await;
        admin
            .batch_execute(&format!("create database {name}"))
            .await
            .expect("create database");
        TestDb { cluster, name }
    }

    /// A URL for this database.
    pub fn url(&self) -> String {
        self.cluster.url(&self.name)
    }

    /// A plain SQL connection to this database.
    pub async fn connect(&self) -> Client {
        connect_url(&self.url()).await
    }
}

/// Connects with tokio-postgres without TLS and drives the connection in the background.
pub async fn connect_url(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to the test database: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}
