//! The API reads the console uses, on both stores (a real `rampart control` on SQLite, and on a
//! throwaway PostgreSQL): ramps with their latest decision, a ramp's series (and only newer ticks
//! with `after_ms`), a flag with its change history and the definition each change produced, the
//! newest version that changed each flag, DORA by week with its rollbacks, and the console's shell
//! served without a token.

mod browser;
mod process;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use browser::http_json;
use process::postgres::Postgres;
use serde_json::{Value, json};

const FLAGS: &str = "flags:\n  new-checkout:\n    state: ENABLED\n    variants: { \"on\": true, \"off\": false }\n    \
                     defaultVariant: \"off\"\n    metadata: { owner: payments }\n";

fn get(http: SocketAddr, path: &str) -> Value {
    let (code, body) = http_json(http, "GET", path, None, None);
    assert_eq!(code, 200, "GET {path}: {body}");
    body
}

fn control(dir: &Path, store: &str) -> process::Running {
    std::fs::write(dir.join("flags.yaml"), FLAGS).unwrap();
    let config = dir.join("control.toml");
    let text = format!(
        "grpc_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\nflags = \"flags.yaml\"\nstore = \"{store}\"\n"
    );
    std::fs::write(&config, text).unwrap();
    process::start(&["control"], &config, "rampart control serving")
}

fn reads_the_console_uses(http: SocketAddr) {
    let (code, _) =
        http_json(http, "POST", "/api/v1/ramps", None, Some(&json!({"flag": "new-checkout", "treatment": "on"})));
    assert_eq!(code, 201);
    // The engine decides every second (HOLD: no traffic).
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(http, "/api/v1/ramps/new-checkout/series")["kept"].as_u64() < Some(3) {
        assert!(Instant::now() < deadline, "no decisions");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, _) = http_json(http, "POST", "/api/v1/ramps/new-checkout/abort", None, None);
    assert_eq!(code, 200);

    let ramps = get(http, "/api/v1/ramps?limit=10");
    let r = &ramps["ramps"][0];
    assert_eq!((r["state"].as_str(), r["started_by"].as_str()), (Some("aborted"), Some("anonymous")));
    assert_eq!(r["interventions"], 1);
    assert_eq!(r["latest"]["action"], "HOLD", "{r}");
    assert!(get(http, "/api/v1/ramps?limit=0")["ramps"].as_array().unwrap().is_empty());

    let s = get(http, &format!("/api/v1/ramps/new-checkout/series?id={}", r["id"]));
    let points = &s["points"];
    let n = points["at_ms"].as_array().unwrap().len();
    assert!(n >= 3 && n as u64 == s["total"].as_u64().unwrap(), "{s}");
    for column in ["percent", "action", "err_t", "err_c", "err_rr", "err_upper", "err_e", "slow_t", "slow_upper"] {
        assert_eq!(points[column].as_array().unwrap().len(), n, "{column}");
    }
    assert_eq!(points["percent"][0], 1.0);
    assert!(s["thresholds"]["errors"].as_f64().unwrap() > 1.0);
    let second = points["at_ms"][1].as_i64().unwrap();
    let newer = get(http, &format!("/api/v1/ramps/new-checkout/series?after_ms={second}"));
    assert_eq!(newer["kept"].as_u64().unwrap() as usize, n - 2);

    let flag = get(http, "/api/v1/flags/new-checkout");
    assert_eq!(flag["definition"]["metadata"]["owner"], "payments");
    let history = flag["history"].as_array().unwrap();
    assert_eq!(history[0]["action"], "ramp_abort");
    assert_eq!(history[0]["definition"]["ramp"]["percent"], 0.0, "{flag:#}");
    assert_eq!(history[1]["action"], "ramp_start");
    assert_eq!(history[1]["definition"]["ramp"]["percent"], 1.0);
    let changed = get(http, "/api/v1/flags")["changed_versions"]["new-checkout"].as_u64().unwrap();
    assert_eq!(Some(changed), history[0]["version"].as_u64());
    assert_eq!(flag["changed_version"].as_u64(), Some(changed));
    assert_eq!(http_json(http, "GET", "/api/v1/flags/never-defined", None, None).0, 404);

    let weekly = get(http, "/api/v1/dora/weekly?window=30d");
    assert_eq!(weekly["weeks"].as_array().unwrap().len(), 5);
    assert_eq!(weekly["weeks"][4]["aborted"], 1);
    assert_eq!(get(http, "/api/v1/dora?window=30d")["confidence"]["abandon_rate"], 1.0);
    assert_eq!(get(http, "/api/v1/whoami")["auth"], false);
}

#[test]
fn the_console_reads_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let c = control(dir.path(), "control.db");
    reads_the_console_uses(c.addr("http"));
}

#[test]
fn the_console_reads_on_postgres() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let c = control(dir.path(), &pg.url());
    reads_the_console_uses(c.addr("http"));
}
