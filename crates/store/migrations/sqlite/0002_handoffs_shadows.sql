-- How each routed request ended, and what happened on the way (every route
-- tried, retries, the cascade's confidence), beside the pure decision.
ALTER TABLE decisions ADD COLUMN label TEXT NOT NULL DEFAULT 'answered';
ALTER TABLE decisions ADD COLUMN execution TEXT NOT NULL DEFAULT '{}';

-- Requests a policy handed to a human. `status` moves open -> resolved once.
CREATE TABLE handoffs (
    id           TEXT PRIMARY KEY NOT NULL,
    request_id   TEXT NOT NULL,
    created_ms   INTEGER NOT NULL,
    policy_id    TEXT NOT NULL,
    rule_id      TEXT NOT NULL,
    messages     TEXT NOT NULL,
    status       TEXT NOT NULL DEFAULT 'open',
    answer       TEXT,
    reviewer     TEXT,
    resolved_ms  INTEGER
);
CREATE INDEX handoffs_status ON handoffs (status, created_ms);

-- A shadow route's answer beside the primary's, for comparison; the client
-- only ever saw the primary's.
CREATE TABLE shadows (
    request_id      TEXT PRIMARY KEY NOT NULL,
    created_ms      INTEGER NOT NULL,
    policy_id       TEXT NOT NULL,
    primary_route   TEXT NOT NULL,
    primary_status  INTEGER NOT NULL,
    primary_output  TEXT,
    shadow_route    TEXT NOT NULL,
    shadow_status   INTEGER NOT NULL,
    shadow_output   TEXT,
    shadow_ms       INTEGER NOT NULL,
    same_output     INTEGER NOT NULL
);
