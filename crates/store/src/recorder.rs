//! Writing records off the request path: handlers queue them, one task
//! writes them in batches, one transaction per batch.
//!
//! Two queues. Decisions (and shadows) are waited on: each batch of them is
//! written at once. Audit lines, measurements and the records of requests
//! refused before any decision are not: they come at whatever rate clients
//! send, so they are queued without waiting (a full queue drops them and
//! counts each one, [`Recorder::dropped`]), and written together every
//! [`LAZY_WAIT`]. A killed process can lose that long of them.
//!
//! Invariants: each queue is written in the order queued, and a
//! measurement is queued only once its decision was committed, so it never
//! precedes it; a batch is one transaction, so a crash leaves whole records
//! or none; a record the database refuses is logged and loses no other
//! record; the decisions' queue is bounded, so a slow disk slows requests
//! down instead of losing records or memory.
//!
//! Decisions use group commit: [`Recorder::decision`] returns once the
//! transaction holding its record has committed, so a request that waits
//! for it before answering is never answered without its record, even if
//! the process is killed the next instant (WAL with `synchronous = NORMAL`
//! keeps every committed transaction across a killed process). Everyone
//! waiting at once shares one commit, so throughput does not suffer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, Connection};
use tokio::sync::{mpsc, oneshot};

use crate::payload::PayloadRecord;
use crate::{AuditRecord, DecisionRecord, Measured, ShadowRecord, Store, StoreError};

/// Records queued before the writer catches up; beyond this, queuing waits.
const QUEUE: usize = 16 * 1024;
/// Records per transaction at most.
const BATCH: usize = 512;
/// How often records nobody waits on (measurements, refusals' records,
/// audit lines) are written, all of them in one transaction.
const LAZY_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// A record to write.
enum Record {
    Decision(Box<DecisionRecord>),
    Measured(Box<(String, Measured)>),
    Shadow(Box<ShadowRecord>),
    Audit(Box<AuditRecord>),
    Payload(Box<PayloadRecord>),
}

enum Write {
    /// With a waiter (decisions), answered `true` once committed, `false`
    /// if the database refused the record.
    Record(Record, Option<oneshot::Sender<bool>>),
    /// Answered once everything queued before it is written.
    Flush(oneshot::Sender<()>),
}

#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Write>,
    /// Records nobody waits on. The writer never waits on this queue (it
    /// takes what is there every [`LAZY_WAIT`]), so queuing one wakes no
    /// task: a wake and a statement per record were a real share of a
    /// request's CPU.
    lazy: mpsc::Sender<Record>,
    dropped: Arc<Dropped>,
}

/// Records dropped since start because the queue was full (or closed).
#[derive(Debug, Default)]
pub struct Dropped {
    pub audit: AtomicU64,
    /// Measurements and the records of requests refused before a decision.
    pub telemetry: AtomicU64,
}

impl Recorder {
    /// Starts the writer task on the current tokio runtime.
    pub fn start(store: Store) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (lazy, lazy_rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_loop(store, rx, lazy_rx));
        Self { tx, lazy, dropped: Arc::default() }
    }

    async fn send(&self, w: Write) {
        if self.tx.send(w).await.is_err() {
            tracing::error!("the record writer has stopped; a record was not written");
        }
    }

    /// Queues a decision and waits until it is committed (group commit: see
    /// the module doc). `false` if it could not be written (already logged).
    pub async fn decision(&self, r: DecisionRecord) -> bool {
        let (tx, rx) = oneshot::channel();
        self.send(Write::Record(Record::Decision(Box::new(r)), Some(tx))).await;
        rx.await.unwrap_or(false)
    }

    /// Queues a decision without waiting for it: for requests refused
    /// before anything was decided, which come at the rate clients send
    /// them. Dropped and counted when the queue is full.
    pub fn refusal(&self, r: DecisionRecord) {
        self.try_queue(Record::Decision(Box::new(r)), &self.dropped.telemetry, "a refused request's record");
    }

    /// Queues what an answer measured, without waiting (callable from a
    /// `Drop`). Dropped and counted when the queue is full.
    pub fn measured(&self, request_id: String, m: Measured) {
        self.try_queue(Record::Measured(Box::new((request_id, m))), &self.dropped.telemetry, "a measurement");
    }

    /// Queues an audit line without waiting. Dropped and counted when the
    /// queue is full.
    pub fn audit(&self, a: AuditRecord) {
        self.try_queue(Record::Audit(Box::new(a)), &self.dropped.audit, "an audit line");
    }

    /// Queues a kept payload without waiting. Dropped and counted (as
    /// telemetry) when the queue is full.
    pub fn payload(&self, p: PayloadRecord) {
        self.try_queue(Record::Payload(Box::new(p)), &self.dropped.telemetry, "a payload");
    }

    fn try_queue(&self, record: Record, dropped: &AtomicU64, what: &str) {
        if let Err(e) = self.lazy.try_send(record) {
            let n = dropped.fetch_add(1, Ordering::Relaxed) + 1;
            let why = match e {
                mpsc::error::TrySendError::Full(_) => "full",
                mpsc::error::TrySendError::Closed(_) => "closed",
            };
            tracing::error!(dropped = n, "{what} was not written: the record queue is {why}");
        }
    }

    /// What has been dropped since start.
    pub fn dropped(&self) -> &Dropped {
        &self.dropped
    }

    pub async fn shadow(&self, r: ShadowRecord) {
        self.send(Write::Record(Record::Shadow(Box::new(r)), None)).await;
    }

    /// Waits until everything queued so far is on disk (readers call this
    /// first, so they see their own writes).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        self.send(Write::Flush(tx)).await;
        let _ = rx.await;
    }
}

async fn write_loop(store: Store, mut rx: mpsc::Receiver<Write>, mut lazy: mpsc::Receiver<Record>) {
    let mut conn = None;
    let mut batch = Vec::with_capacity(BATCH);
    let mut tick = tokio::time::interval(LAZY_WAIT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (open, ticked) = tokio::select! {
            n = rx.recv_many(&mut batch, BATCH) => (n > 0, false),
            _ = tick.tick() => (true, true),
        };
        // The lazy queue is written every tick, in one transaction (a
        // statement per 64 records, not one per batch of decisions), and
        // by a flush, so that a reader sees everything queued before it.
        // Its order relative to `batch` matters to no one: a measurement
        // is queued only once its decision was committed.
        if ticked || !open || batch.iter().any(|w| matches!(w, Write::Flush(_))) {
            while let Ok(record) = lazy.try_recv() {
                batch.push(Write::Record(record, None));
            }
        }
        if batch.is_empty() {
            if open {
                continue;
            }
            return;
        }
        let mut flushed = Vec::new();
        let mut records = Vec::with_capacity(batch.len());
        let mut waiters = Vec::with_capacity(batch.len());
        for w in batch.drain(..) {
            match w {
                Write::Flush(done) => flushed.push(done),
                Write::Record(record, waiter) => {
                    records.push(record);
                    waiters.push(waiter);
                }
            }
        }
        let written: Vec<bool> = match write_batch(&store, &mut conn, &records).await {
            Ok(()) => vec![true; records.len()],
            Err(e) => {
                // One bad record must not take its batch-mates down with it:
                // write them one by one, and lose only the one that fails.
                tracing::warn!(records = records.len(), "a batch of records failed ({e}); writing them one at a time");
                let mut written = Vec::with_capacity(records.len());
                for r in &records {
                    let one = write_batch(&store, &mut conn, std::slice::from_ref(r)).await;
                    if let Err(e) = &one {
                        tracing::error!("could not write a record: {e}");
                    }
                    written.push(one.is_ok());
                }
                written
            }
        };
        for (waiter, ok) in waiters.into_iter().zip(written) {
            if let Some(waiter) = waiter {
                let _ = waiter.send(ok);
            }
        }
        for done in flushed {
            let _ = done.send(());
        }
    }
}

/// Writes a batch in one transaction on the writer's own connection,
/// taken from the pool once and kept: taking one per batch cost a liveness
/// ping and a task to hand it back, each a round trip to sqlx's SQLite
/// thread, for every batch. After a failure the connection goes back to
/// the pool, and the next batch takes one from it (on PostgreSQL, checked
/// before it is handed over).
async fn write_batch(
    store: &Store,
    conn: &mut Option<PoolConnection<Any>>,
    records: &[Record],
) -> Result<(), StoreError> {
    if records.is_empty() {
        return Ok(());
    }
    if store.outage(crate::now_ms()) {
        return Err(StoreError::InjectedOutage);
    }
    let held = match conn {
        Some(held) => held,
        None => conn.insert(store.pool.acquire().await?),
    };
    let written = write_records(store, held, records).await;
    if written.is_err() {
        *conn = None;
    }
    written
}

/// A batch in one transaction: its decisions in one multi-row INSERT (one
/// round trip to the database, not one per record), shadows and audit
/// lines, then the measurements in one multi-row UPDATE, which may update
/// decisions of this batch. A batch that is one INSERT is not wrapped:
/// that statement is a transaction by itself.
async fn write_records(store: &Store, conn: &mut AnyConnection, records: &[Record]) -> Result<(), StoreError> {
    let decisions: Vec<&DecisionRecord> =
        records.iter().filter_map(|r| if let Record::Decision(d) = r { Some(&**d) } else { None }).collect();
    if decisions.len() == records.len() && decisions.len() <= crate::MAX_ROWS_PER_STATEMENT {
        // One statement is a transaction of its own: what group commit
        // mostly writes under load costs one round trip, not three.
        return crate::insert_decisions(conn, store.params, &decisions).await;
    }
    let mut tx = conn.begin().await?;
    crate::insert_decisions(&mut tx, store.params, &decisions).await?;
    for r in records {
        match r {
            Record::Decision(_) => {}
            Record::Shadow(s) => crate::insert_shadow(&mut tx, s).await?,
            Record::Audit(a) => crate::insert_audit(&mut tx, a).await?,
            Record::Payload(p) => crate::payload::insert_payload(&mut tx, p).await?,
            Record::Measured(_) => {}
        }
    }
    let measured: Vec<(&str, &Measured)> = records
        .iter()
        .filter_map(|r| if let Record::Measured(m) = r { Some((m.0.as_str(), &m.1)) } else { None })
        .collect();
    crate::update_measured(&mut tx, store.params, &measured).await?;
    tx.commit().await?;
    Ok(())
}
