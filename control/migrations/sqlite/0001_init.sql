-- Flag definitions: every version ever served; the highest is current.
CREATE TABLE flag_versions (
    version    INTEGER PRIMARY KEY,
    definition TEXT    NOT NULL,
    source     TEXT    NOT NULL,
    created_ms INTEGER NOT NULL
);

-- The last report sequence applied per sidecar process: a report is applied once.
CREATE TABLE proxy_seq (
    proxy_id TEXT    NOT NULL,
    epoch    INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    PRIMARY KEY (proxy_id, epoch)
);

-- Aggregated stats per flag and variant over all sidecars; the histogram is a sparse
-- rampart.v1.Histogram message.
CREATE TABLE variant_totals (
    flag      TEXT    NOT NULL,
    variant   TEXT    NOT NULL,
    requests  INTEGER NOT NULL,
    errors    INTEGER NOT NULL,
    timeouts  INTEGER NOT NULL,
    histogram BLOB    NOT NULL,
    PRIMARY KEY (flag, variant)
);
