-- Deployments recorded from the pipeline (`POST /api/v1/deployments`): a ramp started for one of
-- their flags takes its commit, so lead time is measured from it. `flags` is a JSON array.
CREATE TABLE deployments (
    id          INTEGER PRIMARY KEY,
    service     TEXT    NOT NULL,
    commit_sha  TEXT    NOT NULL,
    commit_ms   INTEGER NOT NULL,
    pr          TEXT,
    flags       TEXT    NOT NULL,
    recorded_ms INTEGER NOT NULL,
    actor       TEXT    NOT NULL
);
CREATE INDEX deployments_by_time ON deployments (recorded_ms);

-- When a sidecar last evaluated each flag (as its reports say), for the flags' lifecycle.
CREATE TABLE flag_usage (
    flag    TEXT    PRIMARY KEY,
    last_ms INTEGER NOT NULL
);
