//! Rows into records, by column name. Written out rather than derived:
//! sqlx's `Any` rows hold only 64-bit integers, floats, text and (on
//! PostgreSQL) booleans, so narrower integers, JSON columns and SQLite's
//! integer booleans are converted here, each failure naming its column.

use serde::de::DeserializeOwned;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{
    AuditRecord, DecisionRecord, HandoffRecord, JsonText, KeyRecord, Measured, ShadowRecord, StoreError, TenantRecord,
};

fn bad(col: &str, e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Db(sqlx::Error::ColumnDecode { index: col.to_string(), source: Box::new(e) })
}

fn text(row: &AnyRow, col: &str) -> Result<String, StoreError> {
    Ok(row.try_get(col)?)
}

fn opt_text(row: &AnyRow, col: &str) -> Result<Option<String>, StoreError> {
    Ok(row.try_get(col)?)
}

fn int(row: &AnyRow, col: &str) -> Result<i64, StoreError> {
    Ok(row.try_get(col)?)
}

fn opt_int(row: &AnyRow, col: &str) -> Result<Option<i64>, StoreError> {
    Ok(row.try_get(col)?)
}

fn narrow<T: TryFrom<i64, Error = std::num::TryFromIntError>>(row: &AnyRow, col: &str) -> Result<T, StoreError> {
    T::try_from(int(row, col)?).map_err(|e| bad(col, e))
}

fn opt_narrow<T: TryFrom<i64, Error = std::num::TryFromIntError>>(
    row: &AnyRow,
    col: &str,
) -> Result<Option<T>, StoreError> {
    opt_int(row, col)?.map(|v| T::try_from(v).map_err(|e| bad(col, e))).transpose()
}

fn json<T: DeserializeOwned>(row: &AnyRow, col: &str) -> Result<T, StoreError> {
    serde_json::from_str(&text(row, col)?).map_err(|e| bad(col, e))
}

fn json_text(row: &AnyRow, col: &str) -> Result<JsonText, StoreError> {
    JsonText::parse(text(row, col)?).map_err(|e| bad(col, e))
}

/// PostgreSQL has booleans; SQLite keeps them as 0 and 1.
fn flag(row: &AnyRow, col: &str) -> Result<bool, StoreError> {
    match row.try_get::<bool, _>(col) {
        Ok(b) => Ok(b),
        Err(_) => Ok(int(row, col)? != 0),
    }
}

fn opt_flag(row: &AnyRow, col: &str) -> Result<Option<bool>, StoreError> {
    match row.try_get::<Option<bool>, _>(col) {
        Ok(b) => Ok(b),
        Err(_) => Ok(opt_int(row, col)?.map(|v| v != 0)),
    }
}

pub fn outcome(row: &AnyRow) -> Result<crate::Outcome, StoreError> {
    Ok(crate::Outcome {
        created_ms: int(row, "created_ms")?,
        route: text(row, "route")?,
        status: narrow(row, "status")?,
        label: text(row, "label")?,
        measured_ms: opt_int(row, "measured_ms")?,
        ttft_ms: row.try_get("ttft_ms")?,
        total_ms: row.try_get("total_ms")?,
        family: opt_text(row, "family")?,
        chosen: opt_text(row, "chosen")?,
    })
}

pub fn decision(row: &AnyRow) -> Result<DecisionRecord, StoreError> {
    Ok(DecisionRecord {
        request_id: text(row, "request_id")?,
        created_ms: int(row, "created_ms")?,
        policy_id: text(row, "policy_id")?,
        rule_id: opt_text(row, "rule_id")?,
        route: text(row, "route")?,
        status: narrow(row, "status")?,
        reason: text(row, "reason")?,
        decision: json_text(row, "decision")?,
        label: text(row, "label")?,
        execution: json_text(row, "execution")?,
        tenant: opt_text(row, "tenant")?,
        model: opt_text(row, "model")?,
        runtime: opt_text(row, "runtime")?,
        node: opt_text(row, "node")?,
        stream: flag(row, "stream")?,
        retries: narrow(row, "retries")?,
        fallbacks: narrow(row, "fallbacks")?,
        cascade: opt_text(row, "cascade")?,
        measured: Measured {
            prompt_tokens: opt_narrow(row, "prompt_tokens")?,
            cached_tokens: opt_narrow(row, "cached_tokens")?,
            completion_tokens: opt_narrow(row, "completion_tokens")?,
            cost_usd: row.try_get("cost_usd")?,
            energy_wh: row.try_get("energy_wh")?,
            queue_ms: row.try_get("queue_ms")?,
            prefill_ms: row.try_get("prefill_ms")?,
            decode_ms: row.try_get("decode_ms")?,
            ttft_ms: row.try_get("ttft_ms")?,
            itl_p50_ms: row.try_get("itl_p50_ms")?,
            itl_p99_ms: row.try_get("itl_p99_ms")?,
            itl_max_ms: row.try_get("itl_max_ms")?,
            total_ms: row.try_get("total_ms")?,
            disconnected: opt_flag(row, "disconnected")?,
        },
        measured_ms: opt_int(row, "measured_ms")?,
    })
}

pub fn handoff(row: &AnyRow) -> Result<HandoffRecord, StoreError> {
    Ok(HandoffRecord {
        id: text(row, "id")?,
        request_id: text(row, "request_id")?,
        created_ms: int(row, "created_ms")?,
        policy_id: text(row, "policy_id")?,
        rule_id: text(row, "rule_id")?,
        messages: json(row, "messages")?,
        status: text(row, "status")?,
        answer: opt_text(row, "answer")?,
        reviewer: opt_text(row, "reviewer")?,
        resolved_ms: opt_int(row, "resolved_ms")?,
        tenant: opt_text(row, "tenant")?,
    })
}

pub fn shadow(row: &AnyRow) -> Result<ShadowRecord, StoreError> {
    Ok(ShadowRecord {
        request_id: text(row, "request_id")?,
        created_ms: int(row, "created_ms")?,
        policy_id: text(row, "policy_id")?,
        primary_route: text(row, "primary_route")?,
        primary_status: narrow(row, "primary_status")?,
        primary_output: opt_text(row, "primary_output")?,
        shadow_route: text(row, "shadow_route")?,
        shadow_status: narrow(row, "shadow_status")?,
        shadow_output: opt_text(row, "shadow_output")?,
        shadow_ms: int(row, "shadow_ms")?,
        same_output: flag(row, "same_output")?,
    })
}

pub fn key(row: &AnyRow) -> Result<KeyRecord, StoreError> {
    Ok(KeyRecord {
        id: text(row, "id")?,
        hash: text(row, "hash")?,
        tenant: text(row, "tenant")?,
        role: text(row, "role")?,
        created_ms: int(row, "created_ms")?,
        revoked_ms: opt_int(row, "revoked_ms")?,
        lane: opt_text(row, "lane")?,
        data_class_floor: opt_text(row, "data_class_floor")?,
        routes: json(row, "routes")?,
        families: json(row, "families")?,
        limits: json(row, "limits")?,
    })
}

pub fn tenant(row: &AnyRow) -> Result<TenantRecord, StoreError> {
    Ok(TenantRecord {
        name: text(row, "name")?,
        created_ms: int(row, "created_ms")?,
        updated_ms: int(row, "updated_ms")?,
        limits: json(row, "limits")?,
        protect: json(row, "protect")?,
    })
}

pub fn audit(row: &AnyRow) -> Result<AuditRecord, StoreError> {
    Ok(AuditRecord {
        id: int(row, "id")?,
        created_ms: int(row, "created_ms")?,
        key_id: opt_text(row, "key_id")?,
        tenant: opt_text(row, "tenant")?,
        action: text(row, "action")?,
        outcome: text(row, "outcome")?,
        status: narrow(row, "status")?,
        detail: text(row, "detail")?,
    })
}
