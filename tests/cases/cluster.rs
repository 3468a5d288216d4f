//! The throwaway-cluster harness itself.

use crate::support::TestDb;

#[tokio::test]
async fn a_throwaway_cluster_runs_with_logical_wal() {
    let db = TestDb::start().await;
    let client = db.connect().await;
    let row = client.query_one("show wal_level", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "logical");
}
