//! Writing records off the request path: handlers queue them, one task
//! writes them in batches, one transaction per batch.
//!
//! Invariants: records are written in the order queued (a measurement never
//! precedes its decision); a batch is one transaction, so a crash leaves
//! whole records or none; a record the database refuses is logged and
//! loses no other record; the queue is bounded, so a slow disk slows
//! requests down instead of losing records or memory. Audit lines,
//! measurements and the records of requests refused before any decision
//! are the exception: they come at whatever rate clients send, and are
//! queued without waiting, so a full queue drops them and counts each one
//! ([`Recorder::dropped`]) instead of blocking a request.
//!
//! Decisions use group commit: [`Recorder::decision`] returns once the
//! transaction holding its record has committed, so a request that waits
//! for it before answering is never answered without its record, even if
//! the process is killed the next instant (WAL with `synchronous = NORMAL`
//! keeps every committed transaction across a killed process). Everyone
//! waiting at once shares one commit, so throughput does not suffer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::{AuditRecord, DecisionRecord, Measured, ShadowRecord, Store, StoreError};

/// Records queued before the writer catches up; beyond this, queuing waits.
const QUEUE: usize = 16 * 1024;
/// Records per transaction at most.
const BATCH: usize = 512;

/// A record to write.
enum Record {
    Decision(Box<DecisionRecord>),
    Measured(Box<(String, Measured)>),
    Shadow(Box<ShadowRecord>),
    Audit(Box<AuditRecord>),
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
        tokio::spawn(write_loop(store, rx));
        Self { tx, dropped: Arc::default() }
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

    fn try_queue(&self, record: Record, dropped: &AtomicU64, what: &str) {
        if let Err(e) = self.tx.try_send(Write::Record(record, None)) {
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

async fn write_loop(store: Store, mut rx: mpsc::Receiver<Write>) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
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
        let written: Vec<bool> = match write_batch(&store, &records).await {
            Ok(()) => vec![true; records.len()],
            Err(e) => {
                // One bad record must not take its batch-mates down with it:
                // write them one by one, and lose only the one that fails.
                tracing::warn!(records = records.len(), "a batch of records failed ({e}); writing them one at a time");
                let mut written = Vec::with_capacity(records.len());
                for r in &records {
                    let one = write_batch(&store, std::slice::from_ref(r)).await;
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

/// Writes a batch in one transaction: its decisions in one multi-row
/// INSERT (one round trip to the database, not one per record), then
/// shadows, audit lines and measurements, which may update decisions of
/// this batch.
async fn write_batch(store: &Store, records: &[Record]) -> Result<(), StoreError> {
    if records.is_empty() {
        return Ok(());
    }
    let mut tx = store.pool.begin().await?;
    let decisions: Vec<&DecisionRecord> =
        records.iter().filter_map(|r| if let Record::Decision(d) = r { Some(&**d) } else { None }).collect();
    crate::insert_decisions(&mut tx, &decisions).await?;
    for r in records {
        match r {
            Record::Decision(_) => {}
            Record::Shadow(s) => crate::insert_shadow(&mut tx, s).await?,
            Record::Audit(a) => crate::insert_audit(&mut tx, a).await?,
            Record::Measured(m) => crate::update_measured(&mut tx, &m.0, &m.1).await?,
        }
    }
    tx.commit().await?;
    Ok(())
}
