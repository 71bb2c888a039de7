-- Canary rollouts: every step (start, step up, eval verdict, promote,
-- roll back) with the figures that caused it. Append-only.
CREATE TABLE rollout_steps (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    rollout_id  TEXT NOT NULL,
    at_ms       INTEGER NOT NULL,
    -- `start`, `step`, `eval`, `promote`, `rollback`, `abort`.
    action      TEXT NOT NULL,
    incumbent   TEXT NOT NULL,
    candidate   TEXT NOT NULL,
    -- The candidate's share of traffic after this step, 0 to 1.
    share       REAL NOT NULL,
    -- JSON: each arm's figures over the step's window, the margins.
    figures     TEXT NOT NULL,
    reason      TEXT NOT NULL
);
CREATE INDEX rollout_steps_rollout ON rollout_steps (rollout_id, id);

-- A client's verdict on an answer (`POST /v1/feedback`).
CREATE TABLE feedback (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id  TEXT NOT NULL,
    created_ms  INTEGER NOT NULL,
    -- `good` or `bad`.
    verdict     TEXT NOT NULL,
    tenant      TEXT,
    comment     TEXT
);
CREATE INDEX feedback_request ON feedback (request_id);
CREATE INDEX feedback_created ON feedback (created_ms);
