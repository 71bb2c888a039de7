//! Request payloads kept by policy (`[[protect.payloads]]`): none by
//! default; redacted text; or the full request sealed with AES-256-GCM
//! under a key only the operator holds. Each row names the key it was
//! sealed with, so keys rotate (the newest seals, older ones still open
//! what they sealed), and each has an expiry after which the purge task
//! deletes it. Metadata (the decisions table) never needs the key.
//!
//! A wrong or missing key is an error that names the key id, never
//! garbage: GCM authenticates what it decrypts.

use std::collections::BTreeMap;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::{Store, StoreError};

/// One stored payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PayloadRecord {
    pub request_id: String,
    pub created_ms: i64,
    pub route: String,
    pub data_class: String,
    /// `redacted` (body is the text) or `encrypted` (body is base64).
    pub kind: String,
    pub key_id: Option<String>,
    /// base64, with `encrypted`.
    pub nonce: Option<String>,
    pub body: String,
    pub expires_ms: i64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PayloadError {
    #[error("the payload key file: {0}")]
    Keys(String),
    #[error(
        "payload of {request_id} was sealed with key `{key_id}`, which is not among the keys given (have: {have})"
    )]
    UnknownKey { request_id: String, key_id: String, have: String },
    #[error("payload of {request_id} does not open with key `{key_id}`: the key under that id is not the one it was sealed with, or the row was changed")]
    WrongKey { request_id: String, key_id: String },
    #[error("payload of {request_id} is damaged: {why}")]
    Damaged { request_id: String, why: String },
}

/// The operator's payload keys: the first seals, all open.
#[derive(Clone)]
pub struct PayloadKeys {
    current: String,
    keys: BTreeMap<String, Aes256Gcm>,
}

impl std::fmt::Debug for PayloadKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys themselves.
        f.debug_struct("PayloadKeys").field("current", &self.current).field("ids", &self.keys.keys()).finish()
    }
}

impl PayloadKeys {
    /// One key per line, 64 hex digits, optionally after an id and a space
    /// (`2026-11 9f3a…`); without an id, the id is the first 8 hex digits
    /// of the key's sha256. The first line is the key that seals; rotate by
    /// putting a new key first and keeping the old ones below it.
    pub fn parse(text: &str) -> Result<Self, PayloadError> {
        let mut current = None;
        let mut keys = BTreeMap::new();
        for (n, line) in text.lines().map(str::trim).enumerate().filter(|(_, l)| !l.is_empty() && !l.starts_with('#')) {
            let (id, hex_key) = match line.split_once(char::is_whitespace) {
                Some((id, key)) => (Some(id.to_string()), key.trim()),
                None => (None, line),
            };
            let bytes = hex::decode(hex_key)
                .ok()
                .filter(|b| b.len() == 32)
                .ok_or_else(|| PayloadError::Keys(format!("line {}: a key is 64 hex digits (32 bytes)", n + 1)))?;
            let id = id.unwrap_or_else(|| hex::encode(&Sha256::digest(&bytes)[..4]));
            let cipher = Aes256Gcm::new_from_slice(&bytes).map_err(|e| PayloadError::Keys(e.to_string()))?;
            if keys.insert(id.clone(), cipher).is_some() {
                return Err(PayloadError::Keys(format!("line {}: key id `{id}` appears twice", n + 1)));
            }
            current.get_or_insert(id);
        }
        let current = current.ok_or_else(|| PayloadError::Keys("no key in it".into()))?;
        Ok(Self { current, keys })
    }

    pub fn current_id(&self) -> &str {
        &self.current
    }

    /// Seals `plain` under the current key: (key id, nonce, ciphertext), base64.
    pub fn seal(&self, plain: &[u8]) -> Result<(String, String, String), PayloadError> {
        let cipher = self.keys.get(&self.current).ok_or_else(|| PayloadError::Keys("no current key".into()))?;
        let mut nonce = [0u8; 12];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
        let sealed = cipher
            .encrypt(Nonce::from_slice(&nonce), plain)
            .map_err(|_| PayloadError::Keys("encryption failed".into()))?;
        let b64 = base64::engine::general_purpose::STANDARD;
        Ok((self.current.clone(), b64.encode(nonce), b64.encode(sealed)))
    }

    /// The plaintext of an `encrypted` record.
    pub fn open(&self, r: &PayloadRecord) -> Result<Vec<u8>, PayloadError> {
        let damaged = |why: &str| PayloadError::Damaged { request_id: r.request_id.clone(), why: why.into() };
        let key_id = r.key_id.clone().ok_or_else(|| damaged("no key id"))?;
        let cipher = self.keys.get(&key_id).ok_or_else(|| PayloadError::UnknownKey {
            request_id: r.request_id.clone(),
            key_id: key_id.clone(),
            have: self.keys.keys().cloned().collect::<Vec<_>>().join(", "),
        })?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let nonce = b64.decode(r.nonce.as_deref().unwrap_or_default()).map_err(|_| damaged("its nonce"))?;
        let body = b64.decode(&r.body).map_err(|_| damaged("its body is not base64"))?;
        if nonce.len() != 12 {
            return Err(damaged("its nonce"));
        }
        cipher
            .decrypt(Nonce::from_slice(&nonce), body.as_slice())
            .map_err(|_| PayloadError::WrongKey { request_id: r.request_id.clone(), key_id })
    }
}

/// What one purge deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Purged {
    pub payloads: u64,
    pub shadows: u64,
    pub handoffs: u64,
}

impl Store {
    pub async fn put_payload(&self, p: &PayloadRecord) -> Result<(), StoreError> {
        insert_payload(&mut *self.pool.acquire().await?, p).await
    }

    pub async fn payload(&self, request_id: &str) -> Result<Option<PayloadRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM payloads WHERE request_id = $1")
            .bind(request_id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(PayloadRecord {
                request_id: r.try_get("request_id")?,
                created_ms: r.try_get("created_ms")?,
                route: r.try_get("route")?,
                data_class: r.try_get("data_class")?,
                kind: r.try_get("kind")?,
                key_id: r.try_get("key_id")?,
                nonce: r.try_get("nonce")?,
                body: r.try_get("body")?,
                expires_ms: r.try_get("expires_ms")?,
            })
        })
        .transpose()
    }

    /// Deletes, as of `now_ms`: payloads past their expiry; shadow copies
    /// older than `shadow_ms`; handoffs resolved more than `handoff_ms` ago
    /// (an open one waits for its person whatever its age). `None`: kept.
    pub async fn purge(
        &self,
        now_ms: i64,
        shadow_ms: Option<i64>,
        handoff_ms: Option<i64>,
    ) -> Result<Purged, StoreError> {
        let mut tx = self.pool.begin().await?;
        let payloads = sqlx::query("DELETE FROM payloads WHERE expires_ms <= $1")
            .bind(now_ms)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let shadows = match shadow_ms {
            Some(age) => sqlx::query("DELETE FROM shadows WHERE created_ms <= $1")
                .bind(now_ms - age)
                .execute(&mut *tx)
                .await?
                .rows_affected(),
            None => 0,
        };
        let handoffs = match handoff_ms {
            Some(age) => sqlx::query("DELETE FROM handoffs WHERE status <> 'open' AND resolved_ms <= $1")
                .bind(now_ms - age)
                .execute(&mut *tx)
                .await?
                .rows_affected(),
            None => 0,
        };
        tx.commit().await?;
        Ok(Purged { payloads, shadows, handoffs })
    }
}

pub(crate) async fn insert_payload(conn: &mut sqlx::AnyConnection, p: &PayloadRecord) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO payloads (request_id, created_ms, route, data_class, kind, key_id, nonce, body, expires_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(p.request_id.clone())
    .bind(p.created_ms)
    .bind(p.route.clone())
    .bind(p.data_class.clone())
    .bind(p.kind.clone())
    .bind(p.key_id.clone())
    .bind(p.nonce.clone())
    .bind(p.body.clone())
    .bind(p.expires_ms)
    .execute(conn)
    .await?;
    Ok(())
}
