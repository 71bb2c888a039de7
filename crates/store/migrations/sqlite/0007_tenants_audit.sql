-- Tenants as objects: limits that hold for all of a tenant's keys together.
-- A key's tenant need not be listed here (then only the key's own limits
-- hold).
CREATE TABLE tenants (
    name        TEXT PRIMARY KEY NOT NULL,
    created_ms  INTEGER NOT NULL,
    updated_ms  INTEGER NOT NULL,
    -- JSON, as api_keys.limits; '{}': none.
    limits      TEXT NOT NULL DEFAULT '{}'
);

-- Who did, or tried to do, what: every refused request (401, 403, 429) and
-- every change to keys and tenants. Append-only.
CREATE TABLE audit (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    created_ms  INTEGER NOT NULL,
    -- The key's public id and tenant, when the caller presented a valid key.
    key_id      TEXT,
    tenant      TEXT,
    -- What was asked: `POST /v1/chat/completions`, `keys.create`, …
    action      TEXT NOT NULL,
    -- `refused` or `done`.
    outcome     TEXT NOT NULL,
    status      INTEGER NOT NULL,
    -- Why (the error's message), or what changed. Never a secret.
    detail      TEXT NOT NULL
);
CREATE INDEX audit_created ON audit (created_ms);
