-- Which service each sidecar id belongs to, from the first credentialed stream that used it, and
-- whether a credential of its own (a pinned token or certificate) is required to speak as it.
CREATE TABLE proxy_owner (
    proxy_id TEXT    PRIMARY KEY,
    service  TEXT    NOT NULL,
    pinned   INTEGER NOT NULL,
    since_ms INTEGER NOT NULL
);
