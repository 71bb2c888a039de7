-- The whole schema as SQLite reaches it after its migrations 0001 to 0007,
-- in PostgreSQL's types. Integers are BIGINT: the store binds every
-- integer as a 64-bit one, on both databases.
CREATE TABLE decisions (
    request_id         TEXT PRIMARY KEY NOT NULL,
    created_ms         BIGINT NOT NULL,
    policy_id          TEXT NOT NULL,
    rule_id            TEXT,
    route              TEXT NOT NULL,
    status             BIGINT NOT NULL,
    reason             TEXT NOT NULL,
    decision           TEXT NOT NULL,
    label              TEXT NOT NULL DEFAULT 'answered',
    execution          TEXT NOT NULL DEFAULT '{}',
    prompt_tokens      BIGINT,
    completion_tokens  BIGINT,
    cost_usd           DOUBLE PRECISION,
    energy_wh          DOUBLE PRECISION,
    tenant             TEXT
);
CREATE INDEX decisions_created ON decisions (created_ms);

CREATE TABLE handoffs (
    id           TEXT PRIMARY KEY NOT NULL,
    request_id   TEXT NOT NULL,
    created_ms   BIGINT NOT NULL,
    policy_id    TEXT NOT NULL,
    rule_id      TEXT NOT NULL,
    messages     TEXT NOT NULL,
    status       TEXT NOT NULL DEFAULT 'open',
    answer       TEXT,
    reviewer     TEXT,
    resolved_ms  BIGINT,
    tenant       TEXT
);
CREATE INDEX handoffs_status ON handoffs (status, created_ms);

CREATE TABLE shadows (
    request_id      TEXT PRIMARY KEY NOT NULL,
    created_ms      BIGINT NOT NULL,
    policy_id       TEXT NOT NULL,
    primary_route   TEXT NOT NULL,
    primary_status  BIGINT NOT NULL,
    primary_output  TEXT,
    shadow_route    TEXT NOT NULL,
    shadow_status   BIGINT NOT NULL,
    shadow_output   TEXT,
    shadow_ms       BIGINT NOT NULL,
    same_output     BOOLEAN NOT NULL
);

CREATE TABLE api_keys (
    id                TEXT PRIMARY KEY NOT NULL,
    hash              TEXT NOT NULL,
    tenant            TEXT NOT NULL,
    role              TEXT NOT NULL,
    created_ms        BIGINT NOT NULL,
    revoked_ms        BIGINT,
    lane              TEXT,
    data_class_floor  TEXT,
    routes            TEXT NOT NULL DEFAULT '[]',
    families          TEXT NOT NULL DEFAULT '[]',
    limits            TEXT NOT NULL DEFAULT '{}'
);

CREATE TABLE tenants (
    name        TEXT PRIMARY KEY NOT NULL,
    created_ms  BIGINT NOT NULL,
    updated_ms  BIGINT NOT NULL,
    limits      TEXT NOT NULL DEFAULT '{}'
);

CREATE TABLE audit (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_ms  BIGINT NOT NULL,
    key_id      TEXT,
    tenant      TEXT,
    action      TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    status      BIGINT NOT NULL,
    detail      TEXT NOT NULL
);
CREATE INDEX audit_created ON audit (created_ms);
