-- One row per routed request: what was decided, by which policy, and how it ended.
CREATE TABLE decisions (
    request_id  TEXT PRIMARY KEY NOT NULL,
    created_ms  INTEGER NOT NULL,
    policy_id   TEXT NOT NULL,
    rule_id     TEXT,
    route       TEXT NOT NULL,
    status      INTEGER NOT NULL,
    reason      TEXT NOT NULL,
    decision    TEXT NOT NULL
);
CREATE INDEX decisions_created ON decisions (created_ms);
