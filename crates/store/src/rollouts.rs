//! Canary rollouts' steps (`rollout_steps`) and clients' feedback on
//! answers (`feedback`): what a rollout's gate judges by, and what it
//! decided, with the figures.

use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::{JsonText, Store, StoreError};

/// One step of a rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutStep {
    pub id: i64,
    pub rollout_id: String,
    pub at_ms: i64,
    /// `start`, `step`, `eval`, `promote`, `rollback` or `abort`.
    pub action: String,
    pub incumbent: String,
    pub candidate: String,
    /// The candidate's share of traffic after this step.
    pub share: f64,
    pub figures: JsonText,
    pub reason: String,
}

/// A client's verdict on one answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Feedback {
    pub request_id: String,
    pub created_ms: i64,
    /// `good` or `bad`.
    pub verdict: String,
    pub tenant: Option<String>,
    pub comment: Option<String>,
}

fn step(row: &sqlx::any::AnyRow) -> Result<RolloutStep, StoreError> {
    Ok(RolloutStep {
        id: row.try_get("id")?,
        rollout_id: row.try_get("rollout_id")?,
        at_ms: row.try_get("at_ms")?,
        action: row.try_get("action")?,
        incumbent: row.try_get("incumbent")?,
        candidate: row.try_get("candidate")?,
        share: row.try_get("share")?,
        figures: JsonText::parse(row.try_get("figures")?)?,
        reason: row.try_get("reason")?,
    })
}

impl Store {
    pub async fn record_rollout_step(&self, s: &RolloutStep) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO rollout_steps (rollout_id, at_ms, action, incumbent, candidate, share, figures, reason) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(s.rollout_id.clone())
        .bind(s.at_ms)
        .bind(s.action.clone())
        .bind(s.incumbent.clone())
        .bind(s.candidate.clone())
        .bind(s.share)
        .bind(s.figures.as_str().to_string())
        .bind(s.reason.clone())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The steps of the newest `limit` rollouts' steps, oldest first;
    /// `rollout_id` narrows to one.
    pub async fn rollout_steps(&self, rollout_id: Option<&str>, limit: u32) -> Result<Vec<RolloutStep>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM (SELECT * FROM rollout_steps WHERE ($1 IS NULL OR rollout_id = $1) ORDER BY id DESC LIMIT $2) AS newest ORDER BY id",
        )
        .bind(rollout_id.map(str::to_string))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(step).collect()
    }

    pub async fn record_feedback(&self, f: &Feedback) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO feedback (request_id, created_ms, verdict, tenant, comment) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(f.request_id.clone())
        .bind(f.created_ms)
        .bind(f.verdict.clone())
        .bind(f.tenant.clone())
        .bind(f.comment.clone())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Feedback given since `since_ms`, oldest first.
    pub async fn feedback_since(&self, since_ms: i64) -> Result<Vec<Feedback>, StoreError> {
        let rows = sqlx::query("SELECT * FROM feedback WHERE created_ms >= $1 ORDER BY id")
            .bind(since_ms)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Feedback {
                    request_id: r.try_get("request_id")?,
                    created_ms: r.try_get("created_ms")?,
                    verdict: r.try_get("verdict")?,
                    tenant: r.try_get("tenant")?,
                    comment: r.try_get("comment")?,
                })
            })
            .collect()
    }

    /// Answers given feedback since `since_ms`, by the policy version that
    /// recorded them: each answer counts once per verdict however often
    /// it is sent (one client must not outvote the rest), as
    /// policy version: `(policy_id, good, bad)`.
    pub async fn feedback_by_policy(&self, since_ms: i64) -> Result<Vec<(String, i64, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT d.policy_id AS policy_id, \
             CAST(COUNT(DISTINCT CASE WHEN f.verdict = 'good' THEN f.request_id END) AS BIGINT) AS good, \
             CAST(COUNT(DISTINCT CASE WHEN f.verdict = 'bad' THEN f.request_id END) AS BIGINT) AS bad \
             FROM feedback f JOIN decisions d ON d.request_id = f.request_id \
             WHERE f.created_ms >= $1 GROUP BY d.policy_id",
        )
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("policy_id")?, r.try_get::<i64, _>("good")?, r.try_get::<i64, _>("bad")?)))
            .collect()
    }
}
