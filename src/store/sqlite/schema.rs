//! The tables of the embedded store and its schema version (`PRAGMA user_version`).

pub(super) const SCHEMA_VERSION: i64 = 1;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS followers (
    openid      TEXT PRIMARY KEY,
    subscribed  INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS grants (
    openid      TEXT NOT NULL,
    trigger     TEXT NOT NULL,
    opened_at   INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    quota       INTEGER,
    used        INTEGER NOT NULL,
    PRIMARY KEY (openid, trigger)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS grants_expiry ON grants (expires_at);
CREATE TABLE IF NOT EXISTS dedupe (
    key             TEXT PRIMARY KEY,
    received_at_ms  INTEGER NOT NULL,
    answer          TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dedupe_age ON dedupe (received_at_ms);
CREATE TABLE IF NOT EXISTS outbox (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    openid         TEXT NOT NULL,
    rule           TEXT NOT NULL,
    seq            INTEGER NOT NULL,
    action         TEXT NOT NULL,
    due_at_ms      INTEGER NOT NULL,
    status         TEXT NOT NULL,
    reason         TEXT,
    attempts       INTEGER NOT NULL DEFAULT 0,
    push_key       TEXT NOT NULL,
    created_at_ms  INTEGER NOT NULL,
    updated_at_ms  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (status, due_at_ms);
CREATE INDEX IF NOT EXISTS outbox_follower ON outbox (openid, status);
CREATE INDEX IF NOT EXISTS outbox_push ON outbox (push_key);
CREATE TABLE IF NOT EXISTS token (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    token       TEXT NOT NULL,
    expires_at  INTEGER NOT NULL,
    fetched_at  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS locks (
    name      TEXT PRIMARY KEY,
    holder    TEXT NOT NULL,
    until_ms  INTEGER NOT NULL
) WITHOUT ROWID;
";
