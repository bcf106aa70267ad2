-- The audit trail: every change to flags and ramps, by whom (an operator's name, `engine` for the
-- ramp engine's own decisions, `anonymous` on an open API), with the flags version it produced.
CREATE TABLE audit (
    id      INTEGER PRIMARY KEY,
    at_ms   INTEGER NOT NULL,
    actor   TEXT    NOT NULL,
    action  TEXT    NOT NULL,
    flag    TEXT,
    version INTEGER,
    detail  TEXT    NOT NULL
);
CREATE INDEX audit_by_flag ON audit (flag, id);
