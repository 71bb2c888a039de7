-- One record per chat request, routed or not: the decision part (who, what
-- answered it, where) is written before the answer's first byte; the
-- measured part (timings, tokens) once the answer has ended.
ALTER TABLE decisions ADD COLUMN model TEXT;
-- The runtime that served it: the embedded llama.cpp build, or `upstream`.
ALTER TABLE decisions ADD COLUMN runtime TEXT;
-- The switchyard replica that served it (`node-id`).
ALTER TABLE decisions ADD COLUMN node TEXT;
ALTER TABLE decisions ADD COLUMN stream INTEGER NOT NULL DEFAULT 0;
ALTER TABLE decisions ADD COLUMN retries INTEGER NOT NULL DEFAULT 0;
ALTER TABLE decisions ADD COLUMN fallbacks INTEGER NOT NULL DEFAULT 0;
-- `kept` or `escalated` where a cascade judged the answer; NULL otherwise.
ALTER TABLE decisions ADD COLUMN cascade TEXT;
-- Milliseconds, measured by the engine (queue, prefill, decode) or the
-- gateway's own clock (TTFT, inter-token latency, total).
ALTER TABLE decisions ADD COLUMN queue_ms REAL;
ALTER TABLE decisions ADD COLUMN prefill_ms REAL;
ALTER TABLE decisions ADD COLUMN decode_ms REAL;
ALTER TABLE decisions ADD COLUMN ttft_ms REAL;
ALTER TABLE decisions ADD COLUMN itl_p50_ms REAL;
ALTER TABLE decisions ADD COLUMN itl_p99_ms REAL;
ALTER TABLE decisions ADD COLUMN itl_max_ms REAL;
ALTER TABLE decisions ADD COLUMN total_ms REAL;
-- The client left before the answer ended.
ALTER TABLE decisions ADD COLUMN disconnected INTEGER;
-- When the measured part was written; NULL: not (yet); 0: lost (the
-- process stopped first, counted at the next start).
ALTER TABLE decisions ADD COLUMN measured_ms INTEGER;
CREATE INDEX decisions_unmeasured ON decisions (node, measured_ms);
