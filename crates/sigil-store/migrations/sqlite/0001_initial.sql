-- Key-value items. `revision` comes from the store-wide counter in `meta`;
-- `expires_ns` is Unix time in nanoseconds (NULL = never expires).
CREATE TABLE kv (
    key        TEXT PRIMARY KEY NOT NULL,
    value      BLOB NOT NULL,
    revision   INTEGER NOT NULL,
    expires_ns INTEGER NULL
);

-- Hash-chained audit log: hash = SHA-256(prev_hash || "\n" || canonical JSON of the event).
-- `time` is RFC 3339 UTC with 9 fractional digits, so text order is time order.
-- `fields` holds the canonical (sorted-key, compact) JSON that was hashed.
CREATE TABLE audit (
    seq       INTEGER PRIMARY KEY,
    time      TEXT NOT NULL,
    type      TEXT NOT NULL,
    fields    TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);
CREATE INDEX audit_type ON audit (type);
CREATE INDEX audit_time ON audit (time);

-- Store-wide counters. `revision` is persisted (not derived from max(kv.revision)) so that
-- deleting the newest item and restarting can never hand out a revision twice (ABA on CAS).
CREATE TABLE meta (
    name  TEXT PRIMARY KEY NOT NULL,
    value INTEGER NOT NULL
);
INSERT INTO meta (name, value) VALUES ('revision', 0);

-- purge_expired finds expired items without scanning every item.
CREATE INDEX kv_expires ON kv (expires_ns) WHERE expires_ns IS NOT NULL;
