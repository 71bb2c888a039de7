-- Who asked: the key's tenant (NULL when the server has no keys), so a
-- tenant can follow its own handoffs and no one else's.
ALTER TABLE handoffs ADD COLUMN tenant TEXT;
