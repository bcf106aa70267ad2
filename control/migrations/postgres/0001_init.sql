-- The control plane's schema on PostgreSQL, shared by replicas (see control/src/store/postgres.rs).
-- Times are Unix milliseconds.

-- Flag definitions: every version ever served; the highest is current. Only the leading replica
-- writes a version (fenced by its lease), and announces it on channel `rampart_flags`.
CREATE TABLE flag_versions (
    version    BIGINT PRIMARY KEY,
    definition TEXT   NOT NULL,
    source     TEXT   NOT NULL,
    created_ms BIGINT NOT NULL
);

-- The last report sequence applied per sidecar process, whichever replica applied it; `prior_seq`
-- is the sequence before the last batch, so a replica whose view is stale writes nothing.
CREATE TABLE proxy_seq (
    proxy_id   TEXT   NOT NULL,
    epoch      BIGINT NOT NULL,
    last_seq   BIGINT NOT NULL,
    prior_seq  BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (proxy_id, epoch)
);

-- Partial aggregates: each replica's own totals per flag and variant (a flag's totals are the sum
-- over replicas), so no row is updated by every replica.
CREATE TABLE variant_totals (
    replica    TEXT   NOT NULL,
    flag       TEXT   NOT NULL,
    variant    TEXT   NOT NULL,
    requests   BIGINT NOT NULL,
    errors     BIGINT NOT NULL,
    timeouts   BIGINT NOT NULL,
    histogram  BYTEA  NOT NULL,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (replica, flag, variant)
);
CREATE INDEX variant_totals_by_flag ON variant_totals (flag);

-- The randomised windows of applied reports, appended by every replica in the transaction that
-- applies them and taken (deleted) by the leader's ramp engine each tick.
CREATE TABLE ramp_windows (
    id      BIGSERIAL PRIMARY KEY,
    flag    TEXT  NOT NULL,
    variant TEXT  NOT NULL,
    arm     TEXT  NOT NULL,
    latency BYTEA NOT NULL
);

-- Ramps: `record` holds the engine's full state as JSON, so a new leader resumes every ramp at
-- its step with its evidence.
CREATE TABLE ramps (
    id         BIGINT PRIMARY KEY,
    flag       TEXT   NOT NULL,
    state      TEXT   NOT NULL,
    started_ms BIGINT NOT NULL,
    record     TEXT   NOT NULL
);
CREATE INDEX ramps_by_flag ON ramps (flag, id);

CREATE TABLE ramp_decisions (
    id      BIGSERIAL PRIMARY KEY,
    ramp_id BIGINT           NOT NULL REFERENCES ramps (id),
    at_ms   BIGINT           NOT NULL,
    step    INTEGER          NOT NULL,
    percent DOUBLE PRECISION NOT NULL,
    action  TEXT             NOT NULL,
    reason  TEXT             NOT NULL,
    numbers TEXT             NOT NULL
);
CREATE INDEX ramp_decisions_by_ramp ON ramp_decisions (ramp_id, at_ms);

CREATE TABLE ramp_events (
    id      BIGSERIAL PRIMARY KEY,
    ramp_id BIGINT NOT NULL REFERENCES ramps (id),
    at_ms   BIGINT NOT NULL,
    kind    TEXT   NOT NULL,
    detail  TEXT   NOT NULL
);
CREATE INDEX ramp_events_by_ramp ON ramp_events (ramp_id, at_ms);

CREATE TABLE audit (
    id      BIGSERIAL PRIMARY KEY,
    at_ms   BIGINT NOT NULL,
    actor   TEXT   NOT NULL,
    action  TEXT   NOT NULL,
    flag    TEXT,
    version BIGINT,
    detail  TEXT   NOT NULL
);
CREATE INDEX audit_by_flag ON audit (flag, id);

CREATE TABLE proxy_owner (
    proxy_id TEXT    PRIMARY KEY,
    service  TEXT    NOT NULL,
    pinned   BOOLEAN NOT NULL,
    since_ms BIGINT  NOT NULL
);

-- The leader lease: one row; a replica leads while `holder` is its id and `expires_ms` (on the
-- database's clock) is ahead. `term` counts leadership changes.
CREATE TABLE leader (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    holder     TEXT   NOT NULL,
    term       BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL
);

-- Replicas and their heartbeats; `sidecars` lists the connected sidecars with the flags version
-- each serves ([[proxy_id, service, version], ...]), for the leader's rollback acknowledgements.
CREATE TABLE replicas (
    id         TEXT   PRIMARY KEY,
    grpc       TEXT   NOT NULL,
    http       TEXT   NOT NULL,
    started_ms BIGINT NOT NULL,
    seen_ms    BIGINT NOT NULL,
    sidecars   TEXT   NOT NULL DEFAULT '[]'
);

-- Writes (flags replaced, ramps started or operated) asked of a replica that does not lead: the
-- leader carries them out in order and answers in `status` and `result`.
CREATE TABLE commands (
    id         BIGSERIAL PRIMARY KEY,
    body       TEXT   NOT NULL,
    created_ms BIGINT NOT NULL,
    done_ms    BIGINT,
    status     INTEGER,
    result     TEXT
);
CREATE INDEX commands_pending ON commands (id) WHERE done_ms IS NULL;
