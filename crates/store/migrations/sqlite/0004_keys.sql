-- API keys: the public id, the SHA-256 of the secret (never the secret),
-- who holds it and what it may do. A revoked key stays, for the audit.
CREATE TABLE api_keys (
    id                TEXT PRIMARY KEY NOT NULL,
    hash              TEXT NOT NULL,
    tenant            TEXT NOT NULL,
    role              TEXT NOT NULL,
    created_ms        INTEGER NOT NULL,
    revoked_ms        INTEGER,
    -- The lane the key's requests get; a header may not ask for another.
    lane              TEXT,
    -- The least data class of the key's requests, whatever the prompt says.
    data_class_floor  TEXT,
    -- JSON lists; empty means any.
    routes            TEXT NOT NULL DEFAULT '[]',
    families          TEXT NOT NULL DEFAULT '[]'
);
-- Who asked: the key's tenant (NULL when the server has no keys).
ALTER TABLE decisions ADD COLUMN tenant TEXT;
