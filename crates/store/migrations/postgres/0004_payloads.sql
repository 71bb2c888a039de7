-- Request payloads a policy keeps (`[[protect.payloads]]`): redacted text,
-- or AES-256-GCM ciphertext with the id of the key that sealed it. Deleted
-- by the purge task once past `expires_ms`.
CREATE TABLE payloads (
    request_id  TEXT PRIMARY KEY NOT NULL,
    created_ms  BIGINT NOT NULL,
    route       TEXT NOT NULL,
    data_class  TEXT NOT NULL,
    -- `redacted` or `encrypted`.
    kind        TEXT NOT NULL,
    key_id      TEXT,
    nonce       TEXT,
    body        TEXT NOT NULL,
    expires_ms  BIGINT NOT NULL
);
CREATE INDEX payloads_expires ON payloads (expires_ms);
