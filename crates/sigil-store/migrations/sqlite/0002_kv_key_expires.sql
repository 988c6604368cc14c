-- Counting and listing keys under a prefix (bot instances by the million) must
-- not read every row for its expiry: this index covers key and expiry, so
-- `count` and `list_keys` are index-only range scans.
CREATE INDEX kv_key_expires ON kv (key, expires_ns);
