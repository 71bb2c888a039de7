-- Versions of the objects an operator changes while the server runs (the
-- routing policy first; the object name leaves room for others). The row
-- with the highest `seq` for an object is the version in force: every
-- replica polls it and swaps to it, so an apply on one reaches all.
-- Append-only: a rollback is a new row holding an older body.
CREATE TABLE versions (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    -- `policy`.
    object      TEXT NOT NULL,
    -- The object's own id (a policy's version label + content hash).
    version_id  TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    body        TEXT NOT NULL,
    -- `start` (the file given to `serve`), `apply`, `rollback`.
    source      TEXT NOT NULL,
    -- A key id, `open`, or `server:NODE`.
    actor       TEXT NOT NULL,
    applied_ms  INTEGER NOT NULL,
    reason      TEXT NOT NULL
);
CREATE INDEX versions_object ON versions (object, seq);
