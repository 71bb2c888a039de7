-- A tenant's own data protection: detector lists (patterns, keywords) and
-- a payload retention shorter than the policy's. JSON; '{}': none.
ALTER TABLE tenants ADD COLUMN protect TEXT NOT NULL DEFAULT '{}';
