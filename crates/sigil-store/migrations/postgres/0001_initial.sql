-- Key-value items. `revision` comes from the store-wide counter in `meta`;
-- `expires_ns` is Unix time in nanoseconds (NULL = never expires).
-- COLLATE "C": keys sort by their bytes, as the Store contract (and SQLite) says.
CREATE TABLE kv (
    key        TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    value      BYTEA NOT NULL,
    revision   BIGINT NOT NULL,
    expires_ns BIGINT NULL
);
-- purge_expired finds expired items without scanning every item.
CREATE INDEX kv_expires ON kv (expires_ns) WHERE expires_ns IS NOT NULL;

-- Hash-chained audit log, byte-for-byte the SQLite layout (so `sigil auth migrate` copies
-- rows verbatim and the chain still verifies): hash = SHA-256(prev_hash || "\n" ||
-- canonical JSON). `time` is RFC 3339 UTC with 9 fractional digits (text order is time
-- order under COLLATE "C"); `fields` is the canonical JSON that was hashed.
CREATE TABLE audit (
    seq       BIGINT PRIMARY KEY,
    time      TEXT COLLATE "C" NOT NULL,
    type      TEXT COLLATE "C" NOT NULL,
    fields    TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);
CREATE INDEX audit_type ON audit (type);
CREATE INDEX audit_time ON audit (time);

-- Store-wide counters. Every commit locks the `revision` row first (SELECT … FOR UPDATE):
-- that serialises writers across every auth server, so revisions, change-feed positions
-- and audit seqs are all handed out in commit order.
CREATE TABLE meta (
    name  TEXT PRIMARY KEY NOT NULL,
    value BIGINT NOT NULL
);
INSERT INTO meta (name, value) VALUES ('revision', 0);

-- The change feed: one row per committed write (deletes and purges too), at contiguous
-- revisions. Followers on every server read it after a NOTIFY on channel
-- `sigil_changes`, after any reconnect, and every second; rows older than the retention
-- are pruned, and a follower that finds its next revision pruned re-reads everything.
CREATE TABLE changes (
    revision   BIGINT PRIMARY KEY,
    key        TEXT COLLATE "C" NOT NULL,
    value      BYTEA NULL,
    expires_ns BIGINT NULL,
    deleted    BOOLEAN NOT NULL,
    at         TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- Pruning finds old rows without scanning the feed.
CREATE INDEX changes_at ON changes (at);
