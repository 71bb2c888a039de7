-- Prompt tokens the engine found already in its KV cache (the prefix cache)
-- and did not evaluate again; NULL where the backend does not say.
ALTER TABLE decisions ADD COLUMN cached_tokens INTEGER;
