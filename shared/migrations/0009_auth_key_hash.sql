-- Which auth key an account's session holds (a hash, never the key): an import of a
-- session whose key an account already holds must not open a second connection to it.
ALTER TABLE accounts ADD COLUMN auth_key_hash text;
CREATE INDEX accounts_auth_key ON accounts (auth_key_hash) WHERE auth_key_hash IS NOT NULL;
