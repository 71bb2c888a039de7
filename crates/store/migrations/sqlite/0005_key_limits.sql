-- A key's rate limits (JSON: requests_per_minute, concurrent); '{}': none.
ALTER TABLE api_keys ADD COLUMN limits TEXT NOT NULL DEFAULT '{}';
