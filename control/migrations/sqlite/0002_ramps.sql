-- Ramps: one row per ramp ever started; `record` holds the engine's full state as JSON, so a
-- restarted control plane resumes every ramp where it was.
CREATE TABLE ramps (
    id         INTEGER PRIMARY KEY,
    flag       TEXT    NOT NULL,
    state      TEXT    NOT NULL,
    started_ms INTEGER NOT NULL,
    record     TEXT    NOT NULL
);
CREATE INDEX ramps_by_flag ON ramps (flag, id);

-- Every decision with its reason and numbers.
CREATE TABLE ramp_decisions (
    ramp_id INTEGER NOT NULL REFERENCES ramps (id),
    at_ms   INTEGER NOT NULL,
    step    INTEGER NOT NULL,
    percent REAL    NOT NULL,
    action  TEXT    NOT NULL,
    reason  TEXT    NOT NULL,
    numbers TEXT    NOT NULL
);
CREATE INDEX ramp_decisions_by_ramp ON ramp_decisions (ramp_id, at_ms);

-- What happened to a ramp: started, advanced, paused, resumed, rolled back, acknowledged, ...
CREATE TABLE ramp_events (
    ramp_id INTEGER NOT NULL REFERENCES ramps (id),
    at_ms   INTEGER NOT NULL,
    kind    TEXT    NOT NULL,
    detail  TEXT    NOT NULL
);
CREATE INDEX ramp_events_by_ramp ON ramp_events (ramp_id, at_ms);
