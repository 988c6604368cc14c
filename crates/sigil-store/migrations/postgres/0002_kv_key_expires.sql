-- Counting and listing keys under a prefix (bot instances by the million) must
-- not read every row for its expiry: with expiry included, `count` and
-- `list_keys` can be index-only range scans (the key keeps its COLLATE "C").
CREATE INDEX kv_key_expires ON kv (key) INCLUDE (expires_ns);
