//! The catalog on a database reached over the network, as the simulator
//! runs it: [`CatalogDb`] is a modelled database node (the swarm gives it
//! a node of its own, so crashes, partitions and slowness reach it), and
//! [`RemoteCatalog`] the metadata instances' client of it. In production
//! the shared catalog is PostgreSQL ([`pg_store`](super::pg_store)), whose
//! client is not in the simulation build; this model keeps what sharing
//! means there, which the contract suite (`catalog/tests.rs`) checks on
//! all three back ends:
//! - a read-modify-write holds the row's lock across the network, as
//!   `SELECT ... FOR UPDATE` does: the client locks and reads, runs its
//!   change, then writes (or releases); a second writer of the row waits;
//! - an event is applied once across instances: the row's lock is taken
//!   first, the event id checked, and the id recorded with the change in
//!   the same commit;
//! - a transaction left idle longer than [`IDLE_IN_TRANSACTION`] (its
//!   client crashed or was cut off) is rolled back and its lock freed, as
//!   PostgreSQL's `idle_in_transaction_session_timeout` does (set to the
//!   same value by `crate::pg`); a row lock waited for longer than
//!   [`LOCK_WAIT`] fails the waiting call as unavailable (`lock_timeout`);
//! - committed rows survive the node's restart (the state lives in this
//!   value, outside the node, as a database's fsynced commits outlive a
//!   crash); open transactions do not ([`CatalogDb::restarted`]).
//!
//! The committed rows are the SQLite [`Store`], so listing and its order
//! are the embedded back end's own; what the model adds is the network
//! between instance and data, and the locks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::state::{self, Step};
use super::store::{Filter, Store, StoreError, Updated};
use crate::proto::{Video, VideoState};
use crate::registry::consul::{HttpTransport, ModelClient, PostError, json_answer};
use crate::rt;

/// The path every request goes to.
pub const PATH: &str = "/v1/catalog";
pub use crate::schema::{IDLE_IN_TRANSACTION, LOCK_WAIT};
/// Property counted when a call waited for another transaction's row
/// lock: two instances raced for one video.
pub const LOCK_WAITED: &str = "database: a row lock waited for (two writers of one video)";
/// Property counted when an idle transaction was rolled back (its client
/// crashed or was cut off mid-way).
pub const IDLED_OUT: &str = "database: an idle transaction rolled back";
/// Property counted when a crash of the node ended open transactions.
pub const LOST_IN_CRASH: &str = "database: open transactions ended by a crash";
/// Longest answer read.
const BODY_LIMIT: usize = 16 << 20;

/// A video on the wire (its protobuf encoding, in base64).
pub use crate::text::Base64Proto as Row;

/// One call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Insert a new video.
    Create {
        /// The video.
        video: Row<Video>,
    },
    /// Read one.
    Get {
        /// Its id.
        id: String,
    },
    /// Begin an update: lock the row and read it.
    Lock {
        /// The video's id.
        id: String,
    },
    /// Commit a transaction [`Request::Lock`] or [`Request::ApplyLock`]
    /// began: the row's new value if given (an update always gives one),
    /// and the event an apply records.
    Commit {
        /// The transaction.
        txn: u64,
        /// The row's new value, if it changed.
        video: Option<Row<Video>>,
    },
    /// Roll a transaction back.
    Release {
        /// The transaction.
        txn: u64,
    },
    /// Remove one (waits for its lock).
    Delete {
        /// Its id.
        id: String,
    },
    /// A page of the listing.
    List {
        /// Only this owner's.
        owner: Option<String>,
        /// Only in this state.
        state: Option<i32>,
        /// Only those this user may find listed.
        viewer: Option<String>,
        /// After this `(created_at_ms, id)`.
        after: Option<(i64, String)>,
        /// Most videos.
        limit: u32,
    },
    /// Begin applying an event: lock the row and read it, unless the
    /// event was applied (or the video is unknown: then the event is
    /// recorded at once).
    ApplyLock {
        /// The event.
        event_id: String,
        /// The video.
        id: String,
        /// Now, for the record's age.
        now_ms: u64,
    },
}

/// A call's answer (status 200). A failure answers 503 with
/// `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// Done.
    Done,
    /// The id is taken.
    Exists,
    /// A video, if there is one.
    Video(Option<Row<Video>>),
    /// A row locked for a transaction, or `None`: nothing to do (no such
    /// video, or the event was applied).
    Locked(Option<(u64, Row<Video>)>),
    /// Whether a delete removed a row.
    Deleted(bool),
    /// A page.
    Videos(Vec<Row<Video>>),
}

#[derive(Debug)]
struct Txn {
    row: String,
    /// The event it applies, recorded at commit.
    event: Option<(String, u64)>,
    idle_until: rt::Instant,
}

#[derive(Debug, Default)]
struct Locks {
    next: u64,
    open: HashMap<u64, Txn>,
}

impl Locks {
    /// Rolls back the transactions idle too long.
    fn expire(&mut self) {
        let now = rt::now();
        let before = self.open.len();
        self.open.retain(|_, t| t.idle_until > now);
        rt::coverage::hits(IDLED_OUT, (before - self.open.len()) as u64);
    }

    fn held(&mut self, row: &str) -> bool {
        self.expire();
        self.open.values().any(|t| t.row == row)
    }

    fn begin(&mut self, row: &str, event: Option<(String, u64)>) -> u64 {
        self.next += 1;
        self.open.insert(
            self.next,
            Txn {
                row: row.to_owned(),
                event,
                idle_until: rt::now() + IDLE_IN_TRANSACTION,
            },
        );
        self.next
    }

    /// Ends transaction `txn`, if it is still open.
    fn end(&mut self, txn: u64) -> Option<Txn> {
        self.expire();
        self.open.remove(&txn)
    }
}

/// The modelled database node's catalog.
#[derive(Debug)]
pub struct CatalogDb {
    store: Mutex<Store>,
    locks: Mutex<Locks>,
    released: tokio::sync::Notify,
    /// Events a commit found already applied: what the row locks rule
    /// out, kept for the simulator's checker ([`CatalogDb::applied_twice`]).
    twice: Mutex<Vec<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl CatalogDb {
    /// An empty database.
    ///
    /// # Errors
    /// SQLite cannot open an in-memory database.
    pub fn new() -> Result<Arc<Self>, StoreError> {
        Ok(Arc::new(Self {
            store: Mutex::new(Store::open(None)?),
            locks: Mutex::new(Locks::default()),
            released: tokio::sync::Notify::new(),
            twice: Mutex::new(Vec::new()),
        }))
    }

    /// The node came back from a crash: its open transactions are gone.
    pub fn restarted(&self) {
        let mut locks = lock(&self.locks);
        rt::coverage::hits(LOST_IN_CRASH, locks.open.len() as u64);
        locks.open.clear();
        drop(locks);
        self.released.notify_waiters();
    }

    /// The events that were applied twice (a commit found the event
    /// already recorded by another transaction): always none unless row
    /// locking is broken.
    #[must_use]
    pub fn applied_twice(&self) -> Vec<String> {
        lock(&self.twice).clone()
    }

    /// The node's HTTP routes.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route(PATH, post(handle))
            .with_state(Arc::clone(self))
    }

    /// Waits until no transaction holds `row`, then runs `then` with the
    /// locks held (so nothing takes the row in between).
    async fn unlocked<T>(
        &self,
        row: &str,
        then: impl FnOnce(&mut Locks) -> T,
    ) -> Result<T, &'static str> {
        let deadline = rt::now() + LOCK_WAIT;
        let mut waited = false;
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            {
                let mut locks = lock(&self.locks);
                if !locks.held(row) || rt::faults::injected(rt::faults::Bug::RowLockSkipped) {
                    return Ok(then(&mut locks));
                }
            }
            if !waited {
                rt::coverage::hit(LOCK_WAITED);
                waited = true;
            }
            // Also wake when the holder's idleness runs out.
            let wake = (rt::now() + Duration::from_millis(100)).min(deadline);
            let _ = rt::timeout_at(wake, released).await;
            if rt::now() >= deadline {
                return Err("canceling statement due to lock timeout");
            }
        }
    }

    async fn answer(&self, req: Request) -> Result<Answer, String> {
        let sql = |e: StoreError| e.to_string();
        Ok(match req {
            Request::Create { video } => match lock(&self.store).create(&video.0) {
                Ok(()) => Answer::Done,
                Err(StoreError::Exists(_)) => Answer::Exists,
                Err(e) => return Err(sql(e)),
            },
            Request::Get { id } => Answer::Video(lock(&self.store).get(&id).map_err(sql)?.map(Row)),
            Request::Lock { id } => {
                let store = &self.store;
                self.unlocked(&id, |locks| {
                    let v = lock(store).get(&id).map_err(sql)?;
                    Ok::<_, String>(Answer::Locked(v.map(|v| (locks.begin(&id, None), Row(v)))))
                })
                .await??
            }
            Request::Commit { txn, video } => {
                let mut locks = lock(&self.locks);
                let Some(t) = locks.end(txn) else {
                    return Err("the transaction was rolled back (idle too long)".into());
                };
                let video = video.map(|r| r.0);
                if video.as_ref().is_some_and(|v| v.id != t.row) {
                    return Err("the transaction locked another row".into());
                }
                let mut store = lock(&self.store);
                match (t.event, &video) {
                    (Some((event, at)), video) => {
                        if store.applied(&event).map_err(sql)? {
                            lock(&self.twice).push(event.clone());
                        }
                        store.commit_event(&event, at, video.as_ref())
                    }
                    (None, Some(v)) => store.put(v),
                    (None, None) => Ok(()),
                }
                .map_err(sql)?;
                drop(locks);
                self.released.notify_waiters();
                Answer::Done
            }
            Request::Release { txn } => {
                lock(&self.locks).end(txn);
                self.released.notify_waiters();
                Answer::Done
            }
            Request::Delete { id } => {
                let store = &self.store;
                Answer::Deleted(
                    self.unlocked(&id, |_| lock(store).delete(&id).map_err(sql))
                        .await??,
                )
            }
            Request::List {
                owner,
                state,
                viewer,
                after,
                limit,
            } => {
                let filter = Filter {
                    owner,
                    state: state.and_then(|s| VideoState::try_from(s).ok()),
                    viewer,
                };
                let after = after.as_ref().map(|(at, id)| (*at, id.as_str()));
                let page = lock(&self.store).list(&filter, after, limit).map_err(sql)?;
                Answer::Videos(page.into_iter().map(Row).collect())
            }
            Request::ApplyLock {
                event_id,
                id,
                now_ms,
            } => {
                let store = &self.store;
                self.unlocked(&id, |locks| {
                    let mut store = lock(store);
                    // An event of another transaction still open: its
                    // commit decides (only one event per row is open, so
                    // this is the same row's, already waited for).
                    if store.applied(&event_id).map_err(sql)? {
                        return Ok::<_, String>(Answer::Locked(None));
                    }
                    let Some(v) = store.get(&id).map_err(sql)? else {
                        store.commit_event(&event_id, now_ms, None).map_err(sql)?;
                        return Ok(Answer::Locked(None));
                    };
                    Ok(Answer::Locked(Some((
                        locks.begin(&id, Some((event_id, now_ms))),
                        Row(v),
                    ))))
                })
                .await??
            }
        })
    }
}

async fn handle(State(db): State<Arc<CatalogDb>>, Json(req): Json<Request>) -> Response {
    json_answer(db.answer(req).await)
}

/// The catalog on a [`CatalogDb`] at `base` (`http://ip:port`).
#[derive(Debug, Clone)]
pub struct RemoteCatalog(ModelClient);

/// The database failed: why, kept as the error's source.
fn down(why: impl Into<String>) -> StoreError {
    StoreError::Database(PostError::new(why))
}

fn unexpected(answer: &Answer) -> StoreError {
    down(format!("unexpected answer {answer:?}"))
}

impl RemoteCatalog {
    /// A client of the database at `base` (`http://ip:port`).
    #[must_use]
    pub fn new(base: &str, transport: Arc<dyn HttpTransport>) -> Self {
        Self(ModelClient::new(base, PATH, transport, BODY_LIMIT))
    }

    async fn call(&self, req: &Request) -> Result<Answer, StoreError> {
        self.0.call(req).await.map_err(StoreError::Database)
    }

    /// See [`Catalog::create`](super::catalog::Catalog::create).
    ///
    /// # Errors
    /// [`StoreError::Exists`]; the database failed or is unreachable.
    pub async fn create(&self, v: Video) -> Result<(), StoreError> {
        let id = v.id.clone();
        match self.call(&Request::Create { video: Row(v) }).await? {
            Answer::Done => Ok(()),
            Answer::Exists => Err(StoreError::Exists(id)),
            other => Err(unexpected(&other)),
        }
    }

    /// See [`Catalog::get`](super::catalog::Catalog::get).
    ///
    /// # Errors
    /// The database failed or is unreachable.
    pub async fn get(&self, id: &str) -> Result<Option<Video>, StoreError> {
        let id = id.to_owned();
        match self.call(&Request::Get { id }).await? {
            Answer::Video(v) => Ok(v.map(|r| r.0)),
            other => Err(unexpected(&other)),
        }
    }

    /// See [`Catalog::update`](super::catalog::Catalog::update): the row
    /// locked and read, changed here, then written.
    ///
    /// # Errors
    /// The database failed or is unreachable; the transaction was rolled
    /// back.
    pub async fn update<T, E>(
        &self,
        id: &str,
        f: impl FnOnce(&mut Video) -> Result<T, E>,
    ) -> Result<Updated<T, E>, StoreError> {
        let id = id.to_owned();
        let (txn, mut v) = match self.call(&Request::Lock { id }).await? {
            Answer::Locked(Some((txn, row))) => (txn, row.0),
            Answer::Locked(None) => return Ok(None),
            other => return Err(unexpected(&other)),
        };
        let out = match f(&mut v) {
            Ok(out) => out,
            Err(refused) => {
                // Unanswered, the lock goes when the transaction idles out.
                let _ = self.call(&Request::Release { txn }).await;
                return Ok(Some(Err(refused)));
            }
        };
        let video = Some(Row(v.clone()));
        match self.call(&Request::Commit { txn, video }).await? {
            Answer::Done => Ok(Some(Ok((v, out)))),
            other => Err(unexpected(&other)),
        }
    }

    /// See [`Catalog::delete`](super::catalog::Catalog::delete).
    ///
    /// # Errors
    /// The database failed or is unreachable.
    pub async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        match self.call(&Request::Delete { id }).await? {
            Answer::Deleted(gone) => Ok(gone),
            other => Err(unexpected(&other)),
        }
    }

    /// See [`Catalog::list`](super::catalog::Catalog::list).
    ///
    /// # Errors
    /// The database failed or is unreachable.
    pub async fn list(
        &self,
        filter: Filter,
        after: Option<(i64, String)>,
        limit: u32,
    ) -> Result<Vec<Video>, StoreError> {
        let req = Request::List {
            owner: filter.owner,
            state: filter.state.map(|s| s as i32),
            viewer: filter.viewer,
            after,
            limit,
        };
        match self.call(&req).await? {
            Answer::Videos(page) => Ok(page.into_iter().map(|r| r.0).collect()),
            other => Err(unexpected(&other)),
        }
    }

    /// See [`Catalog::apply`](super::catalog::Catalog::apply): the row
    /// locked and read with the event unseen, the step run here, then the
    /// event and the change committed together.
    ///
    /// # Errors
    /// The database failed or is unreachable; the transaction was rolled
    /// back (the event is then not recorded).
    pub async fn apply(
        &self,
        event_id: String,
        id: String,
        now_ms: u64,
        step: Step,
        fill: impl FnOnce(&mut Video),
    ) -> Result<Option<Video>, StoreError> {
        let req = Request::ApplyLock {
            event_id,
            id,
            now_ms,
        };
        let (txn, mut v) = match self.call(&req).await? {
            Answer::Locked(Some((txn, row))) => (txn, row.0),
            Answer::Locked(None) => return Ok(None),
            other => return Err(unexpected(&other)),
        };
        let now = i64::try_from(now_ms).unwrap_or(i64::MAX);
        let changed = state::advance(&mut v, &step, now, fill).then_some(v);
        let video = changed.clone().map(Row);
        match self.call(&Request::Commit { txn, video }).await? {
            Answer::Done => Ok(changed),
            other => Err(unexpected(&other)),
        }
    }
}
