//! The job store contract (`streamgate_testkit::job_store_contract`) on the
//! SQLite store; `tests/nats_job_queue.rs` runs it on JetStream.

use streamgate::services::worker::store::{SqliteStore, Store};
use streamgate_testkit::job_store_contract as contract;

#[tokio::test]
async fn sqlite_meets_the_job_store_contract() {
    let (store, _) = SqliteStore::open(None, 0).await.expect("in-memory SQLite");
    contract::submissions_deduplicate_and_respect_the_limit(&Store::Sqlite(store)).await;
    let (store, _) = SqliteStore::open(None, 0).await.expect("in-memory SQLite");
    contract::lists_page_newest_first_with_filters(&Store::Sqlite(store)).await;
}
