-- Every change to what the server does (policies, models, keys, roles,
-- limits, retention), hash-chained: each entry's hash covers its fields
-- and the previous entry's hash, so an edit, a deletion or a reordering
-- breaks the chain where it happened (`switchyard audit verify`). Written
-- before the change takes effect. Append-only.
CREATE TABLE audit_chain (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    created_ms  INTEGER NOT NULL,
    -- Who: a key id, `cli`, or `server:NODE`.
    actor       TEXT NOT NULL,
    tenant      TEXT,
    -- What: `policy`, `model:NAME`, `key:ID`, `tenant:NAME`, `retention`.
    object      TEXT NOT NULL,
    -- `load`, `create`, `revoke`, `put`, `purge`, ...
    action      TEXT NOT NULL,
    -- sha256 of the object's state before and after; NULL: none.
    before_sha256 TEXT,
    after_sha256  TEXT,
    reason      TEXT NOT NULL,
    -- UNIQUE: two writers racing for the same place in the chain cannot
    -- both win; the loser reads the new head and tries again.
    prev_hash   TEXT NOT NULL UNIQUE,
    hash        TEXT NOT NULL
);
CREATE INDEX audit_chain_object ON audit_chain (object, id);
