//! Writing records off the request path: handlers queue them, one task
//! writes them in batches, one transaction per batch.
//!
//! Invariants: records are written in the order queued (a completion never
//! precedes its decision); a batch is one transaction, so a crash leaves
//! whole records or none; a record the database refuses is logged and
//! loses no other record; the queue is bounded, so a slow disk slows
//! requests down instead of losing records or memory.

use tokio::sync::{mpsc, oneshot};

use crate::{DecisionRecord, ShadowRecord, Store, StoreError};

/// Records queued before the writer catches up; beyond this, queuing waits.
const QUEUE: usize = 16 * 1024;
/// Records per transaction at most.
const BATCH: usize = 512;

/// What an answer turned out to use and cost, known once it was sent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Completion {
    pub request_id: String,
    pub prompt_tokens: Option<u32>,
    pub completion_tokens: Option<u32>,
    pub cost_usd: Option<f64>,
    pub energy_wh: Option<f64>,
}

enum Write {
    Decision(Box<DecisionRecord>),
    Completion(Completion),
    Shadow(Box<ShadowRecord>),
    /// Answered once everything queued before it is written.
    Flush(oneshot::Sender<()>),
}

#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Write>,
}

impl Recorder {
    /// Starts the writer task on the current tokio runtime.
    pub fn start(store: Store) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_loop(store, rx));
        Self { tx }
    }

    async fn send(&self, w: Write) {
        if self.tx.send(w).await.is_err() {
            tracing::error!("the record writer has stopped; a record was not written");
        }
    }

    pub async fn decision(&self, r: DecisionRecord) {
        self.send(Write::Decision(Box::new(r))).await;
    }

    /// Queues without waiting (callable from a `Drop`); if the queue is
    /// full, a task waits for room instead.
    pub fn completion(&self, c: Completion) {
        match self.tx.try_send(Write::Completion(c)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(w)) => {
                let this = self.clone();
                tokio::spawn(async move { this.send(w).await });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => tracing::error!("the record writer has stopped; a record was not written"),
        }
    }

    pub async fn shadow(&self, r: ShadowRecord) {
        self.send(Write::Shadow(Box::new(r))).await;
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
        let writes: Vec<Write> = batch
            .drain(..)
            .filter_map(|w| match w {
                Write::Flush(done) => {
                    flushed.push(done);
                    None
                }
                other => Some(other),
            })
            .collect();
        if let Err(e) = write_batch(&store, &writes).await {
            // One bad record must not take its batch-mates down with it:
            // write them one by one, and lose only the one that fails.
            tracing::warn!(records = writes.len(), "a batch of records failed ({e}); writing them one at a time");
            for w in &writes {
                if let Err(e) = write_batch(&store, std::slice::from_ref(w)).await {
                    tracing::error!("could not write a record: {e}");
                }
            }
        }
        for done in flushed {
            let _ = done.send(());
        }
    }
}

/// Writes a batch in one transaction: its decisions in one multi-row
/// INSERT (one round trip to SQLite's thread, not one per record), then
/// shadows, then completions, which may update decisions of this batch.
async fn write_batch(store: &Store, writes: &[Write]) -> Result<(), StoreError> {
    if writes.is_empty() {
        return Ok(());
    }
    let mut tx = store.pool.begin().await?;
    let decisions: Vec<&DecisionRecord> = writes.iter().filter_map(|w| if let Write::Decision(r) = w { Some(&**r) } else { None }).collect();
    crate::insert_decisions(&mut tx, &decisions).await?;
    for w in writes {
        match w {
            Write::Decision(_) => {}
            Write::Shadow(r) => crate::insert_shadow(&mut tx, r).await?,
            Write::Completion(c) => {
                sqlx::query("UPDATE decisions SET prompt_tokens = ?, completion_tokens = ?, cost_usd = ?, energy_wh = ? WHERE request_id = ?")
                    .bind(c.prompt_tokens.map(i64::from))
                    .bind(c.completion_tokens.map(i64::from))
                    .bind(c.cost_usd)
                    .bind(c.energy_wh)
                    .bind(&c.request_id)
                    .execute(&mut *tx)
                    .await?;
            }
            Write::Flush(_) => unreachable!("flushes are answered, not written"),
        }
    }
    tx.commit().await?;
    Ok(())
}
