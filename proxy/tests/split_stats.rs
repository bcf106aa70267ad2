//! End-to-end, on real sockets: only randomised traffic — variants the ramp's split chose at this
//! sidecar — is counted in a variant's `split` stats, by distinct units (users), as the admin
//! `/stats` endpoint shows them. Targeting matches, override tokens, trusted propagated assignments
//! and requests without a bucketing key are served and counted in the totals, not in `split`.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;

use rampart_flags::{Bump, Context, FlagSet};
use rampart_proxy::propagate::{Key, Kind, sign, unix_now};
use serde_json::Value;
use support::*;

const SECRET: &str = "a shared secret of at least 32 bytes";

/// `new-checkout` at 50 %, bucketed on the `userId` attribute; staff in NL are targeted to `on`.
fn flags(slow_us: Option<u64>) -> String {
    let slow = slow_us.map(|us| format!(", slowUs: {us}")).unwrap_or_default();
    format!(
        r#"
flags:
  new-checkout:
    state: ENABLED
    variants: {{ "on": true, "off": false }}
    defaultVariant: "off"
    targeting: {{ "if": [{{ "==": [{{ "var": "country" }}, "NL"] }}, "on", null] }}
    ramp: {{ treatment: "on", percent: 50, bucketBy: userId{slow} }}
"#
    )
}

const CONFIG: &str = "[context]\nuserId = [\"header:x-user-id\"]\ncountry = [\"header:x-country\"]\n\
                      [propagation]\nkey = \"a shared secret of at least 32 bytes\"\n";

/// The variant the ramp gives `user` (the sidecar's own flag engine, same definition).
fn variant_of(user: &str) -> &'static str {
    let set = FlagSet::from_str("flags.yaml", &flags(None)).unwrap();
    let arena = Bump::new();
    let ctx = Context::builder(&arena).attr("userId", user).build();
    match set.evaluate("new-checkout", &ctx, &arena).variant_name() {
        Some("on") => "on",
        Some("off") => "off",
        other => panic!("unexpected variant {other:?}"),
    }
}

/// `new-checkout`'s series on the admin `/stats` endpoint, by variant.
async fn stats(admin: SocketAddr) -> HashMap<String, Value> {
    let (status, body) = get(&format!("http://{admin}/stats"), &[]).await;
    assert_eq!(status, http::StatusCode::OK, "{body}");
    let json: Value = serde_json::from_str(&body).unwrap();
    let series = json["series"].as_array().unwrap();
    series
        .iter()
        .filter(|s| s["flag"] == "new-checkout")
        .map(|s| (s["variant"].as_str().unwrap().to_owned(), s.clone()))
        .collect()
}

/// `field` of the split part of `variant`'s series.
fn split(stats: &HashMap<String, Value>, variant: &str, field: &str) -> u64 {
    stats[variant]["split"][field].as_u64().unwrap()
}

fn total(stats: &HashMap<String, Value>, variant: &str, field: &str) -> u64 {
    stats[variant][field].as_u64().unwrap()
}

/// Per variant, how many of `users` the ramp assigns it.
fn count_by_variant<'a>(users: impl IntoIterator<Item = &'a String>) -> HashMap<&'static str, u64> {
    let mut by = HashMap::new();
    for u in users {
        *by.entry(variant_of(u)).or_insert(0) += 1;
    }
    by
}

#[tokio::test]
async fn randomised_requests_are_counted_by_distinct_unit() {
    let up = upstream().await;
    let sc = sidecar(up.addr, &flags(None), CONFIG).await;

    // (a) 10 users, 3 requests each; 3 more users whose requests all fail, each retrying 5 times.
    let users: Vec<String> = (0..10).map(|i| format!("user-{i}")).collect();
    let failing: Vec<String> = (0..3).map(|i| format!("broken-{i}")).collect();
    for user in &users {
        for _ in 0..3 {
            let h = seen(&sc.url("/"), &[("x-user-id", user)]).await;
            assert_eq!(header(&h, "x-flag-new-checkout").as_deref(), Some(variant_of(user)));
        }
    }
    for user in &failing {
        for _ in 0..5 {
            let (status, _) = get(&sc.url("/status?code=500"), &[("x-user-id", user)]).await;
            assert_eq!(status, 500);
        }
    }
    let (ok_users, failing_users) = (count_by_variant(&users), count_by_variant(&failing));
    assert_eq!(ok_users.len(), 2, "both arms get users: {ok_users:?}");
    let s = stats(sc.admin).await;
    for variant in ["on", "off"] {
        let (ok, bad) = (ok_users.get(variant).copied().unwrap_or(0), failing_users.get(variant).copied().unwrap_or(0));
        assert_eq!(split(&s, variant, "requests"), 3 * ok + 5 * bad, "{variant}: {s:?}");
        assert_eq!(split(&s, variant, "units"), ok + bad, "{variant}: distinct users, not requests");
        assert_eq!(split(&s, variant, "errors"), 5 * bad, "{variant}");
        assert_eq!(split(&s, variant, "failing_units"), bad, "{variant}: one user's retries are one failing unit");
        assert_eq!((split(&s, variant, "slow"), split(&s, variant, "slow_units")), (0, 0), "no slowUs, no slow");
        assert_eq!(total(&s, variant, "requests"), split(&s, variant, "requests"), "{variant}: all randomised so far");
        assert_eq!(total(&s, variant, "errors"), 5 * bad);
    }

    // (b) targeted: NL users get "on" by targeting — in the totals, not in `split`.
    // (c) variants given by an override token or a trusted upstream hop's signed assignments.
    // (d) no bucketing key: the default variant, reason DEFAULT.
    let now = unix_now();
    let key = Key::new(SECRET.as_bytes()).unwrap();
    let override_on = sign(&key, Kind::Override, now + 3600, &[("new-checkout", "on")]);
    let hop_off = sign(&key, Kind::Assignments, now + 60, &[("new-checkout", "off")]);
    let before = s;
    for user in &users {
        let h = seen(&sc.url("/"), &[("x-user-id", user), ("x-country", "NL")]).await;
        assert_eq!(header(&h, "x-flag-new-checkout").as_deref(), Some("on"), "targeted");
        let h = seen(&sc.url("/"), &[("x-user-id", user), ("x-rampart-override", &override_on)]).await;
        assert_eq!(header(&h, "x-flag-new-checkout").as_deref(), Some("on"), "overridden");
        let h = seen(&sc.url("/"), &[("x-user-id", user), ("x-rampart-assignments", &hop_off)]).await;
        assert_eq!(header(&h, "x-flag-new-checkout").as_deref(), Some("off"), "propagated");
        let h = seen(&sc.url("/"), &[]).await;
        assert_eq!(header(&h, "x-flag-new-checkout").as_deref(), Some("off"), "no bucketing key");
    }
    let s = stats(sc.admin).await;
    let n = users.len() as u64;
    assert_eq!(total(&s, "on", "requests"), total(&before, "on", "requests") + 2 * n, "targeted + overridden");
    assert_eq!(total(&s, "off", "requests"), total(&before, "off", "requests") + 2 * n, "propagated + keyless");
    for variant in ["on", "off"] {
        assert_eq!(s[variant]["split"], before[variant]["split"], "{variant}: nothing of (b)–(d) is randomised");
    }
}

#[tokio::test]
async fn slow_randomised_requests_count_against_the_ramps_threshold() {
    let up = upstream().await;
    // 300 ms threshold; slow users wait 400 ms upstream, one user times out (1 s).
    let config = format!("upstream_timeout = \"1s\"\n{CONFIG}");
    let sc = sidecar(up.addr, &flags(Some(300_000)), &config).await;

    let fast: Vec<String> = (0..6).map(|i| format!("fast-{i}")).collect();
    let slow: Vec<String> = (0..4).map(|i| format!("slow-{i}")).collect();
    let stuck = vec!["stuck-0".to_owned()];
    for user in &fast {
        for _ in 0..2 {
            let (status, _) = get(&sc.url("/"), &[("x-user-id", user)]).await;
            assert_eq!(status, 200);
        }
    }
    // Concurrently, so the test waits for the delays once.
    let mut slow_requests = tokio::task::JoinSet::new();
    for user in slow.iter().chain(&slow) {
        let (url, user) = (sc.url("/slow?ms=400"), user.clone());
        slow_requests.spawn(async move { get(&url, &[("x-user-id", &user)]).await.0 });
    }
    let (stuck_status, _) = get(&sc.url("/slow?ms=3000"), &[("x-user-id", &stuck[0])]).await;
    let statuses = slow_requests.join_all().await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(stuck_status, 504, "the upstream timeout answers 504");

    let (fast_by, slow_by, stuck_by) = (count_by_variant(&fast), count_by_variant(&slow), count_by_variant(&stuck));
    let s = stats(sc.admin).await;
    let mut seen_units = 0;
    for variant in ["on", "off"] {
        let get = |by: &HashMap<&str, u64>| by.get(variant).copied().unwrap_or(0);
        let (f, sl, st) = (get(&fast_by), get(&slow_by), get(&stuck_by));
        if f + sl + st == 0 {
            continue;
        }
        assert_eq!(split(&s, variant, "requests"), 2 * f + 2 * sl + st, "{variant}: {s:?}");
        assert_eq!(split(&s, variant, "units"), f + sl + st, "{variant}");
        assert_eq!(split(&s, variant, "slow"), 2 * sl + st, "{variant}: a timeout is slow too");
        assert_eq!(split(&s, variant, "slow_units"), sl + st, "{variant}");
        assert_eq!((split(&s, variant, "errors"), split(&s, variant, "failing_units")), (st, st), "{variant}");
        assert_eq!(total(&s, variant, "timeouts"), st);
        seen_units += split(&s, variant, "units");
    }
    assert_eq!(seen_units, 11);
}

/// A client that sends a malformed chunked body gets a 400, and its request counts against no
/// variant: otherwise any client could roll a ramp back by sending broken bodies as treatment users.
#[tokio::test]
async fn a_malformed_request_body_is_the_clients_fault_not_the_variants() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let up = upstream().await;
    let sc = sidecar(up.addr, &flags(None), CONFIG).await;
    let user = (0..100).map(|i| format!("u{i}")).find(|u| variant_of(u) == "on").unwrap();
    for _ in 0..5 {
        let mut s = tokio::net::TcpStream::connect(sc.addr).await.unwrap();
        let head = format!(
            "POST /buy HTTP/1.1\r\nHost: x\r\nx-user-id: {user}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZ\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut out)).await;
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    }
    let on = stats(sc.admin).await.get("on").cloned().unwrap_or(Value::Null);
    assert_eq!(on["errors"].as_u64().unwrap_or(0), 0, "{on}");
    assert_eq!(on["split"]["errors"].as_u64().unwrap_or(0), 0, "{on}");
    // A well-formed request of the same user is counted (so the check above could fail).
    assert_eq!(get(&format!("http://{}/buy", sc.addr), &[("x-user-id", &user)]).await.0, http::StatusCode::OK);
    assert_eq!(stats(sc.admin).await["on"]["requests"].as_u64(), Some(1));
}
