//! End-to-end, on real sockets: signed assignments across hops (client → sidecar A → sidecar B →
//! upstream), tampered, expired and forged headers, and QA override tokens.

mod support;

use std::net::SocketAddr;

use rampart_proxy::propagate::{Key, Kind, open, pairs, sign, unix_now};
use support::*;

const SECRET: &str = "a shared secret of at least 32 bytes";

const PROPAGATION: &str =
    "[context]\ntargetingKey = \"header:x-user-id\"\n[propagation]\nkey = \"a shared secret of at least 32 bytes\"\n";

/// `new-checkout` ramped to `percent`; `color` only when `with_color`.
fn flags(percent: u32, with_color: bool) -> String {
    let mut yaml = format!(
        "flags:\n  new-checkout:\n    state: ENABLED\n    variants: {{ \"on\": true, \"off\": false }}\n    \
         defaultVariant: \"off\"\n    ramp: {{ treatment: \"on\", percent: {percent} }}\n"
    );
    if with_color {
        yaml.push_str("  color:\n    state: ENABLED\n    variants: { red: r, blue: b }\n    defaultVariant: red\n");
    }
    yaml
}

fn key() -> Key {
    Key::new(SECRET.as_bytes()).unwrap()
}

async fn counter(admin: SocketAddr, sample: &str) -> f64 {
    metric(admin, sample).await.unwrap_or(0.0)
}

/// The (flag, variant) pairs of a valid assignments header.
fn assignments(token: &str) -> Vec<(String, String)> {
    let body = open(&key(), Kind::Assignments, token.as_bytes(), unix_now()).expect("a valid assignments token");
    let s = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
    pairs(body).map(|(f, v)| (s(f), s(v))).collect()
}

#[tokio::test]
async fn chained_sidecars_agree_and_the_second_does_not_re_evaluate() {
    let up = upstream().await;
    // B alone would give everyone "off" (0%); A gives everyone "on" (100%).
    let b = sidecar(up.addr, &flags(0, true), PROPAGATION).await;
    let a = sidecar(b.addr, &flags(100, false), PROPAGATION).await;

    let direct = seen(&b.url("/"), &[("x-user-id", "u-0")]).await;
    assert_eq!(header(&direct, "x-flag-new-checkout").as_deref(), Some("off"));
    let off_before = counter(b.admin, r#"rampart_flag_evaluations_total{flag="new-checkout",variant="off"}"#).await;
    assert_eq!(off_before, 1.0);

    for user in ["u-1", "u-2", "u-3", "u-4", "u-5"] {
        let h = seen(&a.url("/checkout"), &[("x-user-id", user)]).await;
        assert_eq!(header(&h, "x-flag-new-checkout").as_deref(), Some("on"), "B forwards A's variant for {user}");
        assert_eq!(header(&h, "x-flag-color").as_deref(), Some("red"), "flags A does not know are evaluated by B");
        let token = header(&h, "x-rampart-assignments").expect("B signs the assignments for the next hop");
        let mut got = assignments(&token);
        got.sort();
        assert_eq!(got, [("color".into(), "red".into()), ("new-checkout".into(), "on".into())]);
    }
    let evaluations =
        |variant: &str| format!("rampart_flag_evaluations_total{{flag=\"new-checkout\",variant=\"{variant}\"}}");
    assert_eq!(counter(b.admin, &evaluations("on")).await, 0.0, "B never evaluated new-checkout for A's requests");
    assert_eq!(counter(b.admin, &evaluations("off")).await, off_before);
    assert_eq!(counter(b.admin, r#"rampart_assignments_reused_total{flag="new-checkout"}"#).await, 5.0);
    assert_eq!(counter(b.admin, r#"rampart_flag_evaluations_total{flag="color",variant="red"}"#).await, 6.0);
    assert_eq!(counter(a.admin, &evaluations("on")).await, 5.0, "A evaluated each request once");
}

#[tokio::test]
async fn tampered_and_expired_headers_are_removed_and_flags_evaluated_afresh() {
    let up = upstream().await;
    let sc = sidecar(up.addr, &flags(0, false), PROPAGATION).await;
    let now = unix_now();
    let expired = sign(&key(), Kind::Assignments, now - 1, &[("new-checkout", "on")]);
    let tampered = sign(&key(), Kind::Assignments, now + 60, &[("new-checkout", "off")]).replace("=off", "=on");
    let unsigned = "new-checkout=on";
    for (token, reason) in [(&*expired, "expired"), (&*tampered, "signature"), (unsigned, "unsigned")] {
        let h = seen(&sc.url("/"), &[("x-user-id", "u-1"), ("x-rampart-assignments", token)]).await;
        assert_eq!(header(&h, "x-flag-new-checkout").as_deref(), Some("off"), "{reason}: evaluated afresh");
        let forwarded = header(&h, "x-rampart-assignments").unwrap();
        assert_ne!(forwarded, token, "{reason}: the bad header is not forwarded");
        assert_eq!(assignments(&forwarded), [("new-checkout".into(), "off".into())]);
        let sample = format!("rampart_assignments_rejected_total{{reason=\"{reason}\"}}");
        assert_eq!(counter(sc.admin, &sample).await, 1.0, "{sample}");
    }
    let sample = r#"rampart_flag_evaluations_total{flag="new-checkout",variant="off"}"#;
    assert_eq!(counter(sc.admin, sample).await, 3.0);
    assert_eq!(counter(sc.admin, r#"rampart_assignments_reused_total{flag="new-checkout"}"#).await, 0.0);
}

#[tokio::test]
async fn an_override_token_forces_a_variant() {
    let up = upstream().await;
    let sc = sidecar(up.addr, &flags(0, true), PROPAGATION).await;
    let now = unix_now();
    let qa = sign(&key(), Kind::Override, now + 3600, &[("new-checkout", "on"), ("color", "blue")]);
    let upstream_hop = sign(&key(), Kind::Assignments, now + 60, &[("new-checkout", "off")]);
    let h = seen(
        &sc.url("/"),
        &[("x-user-id", "u-1"), ("x-rampart-override", &qa), ("x-rampart-assignments", &upstream_hop)],
    )
    .await;
    assert_eq!(header(&h, "x-flag-new-checkout").as_deref(), Some("on"), "over evaluation and the upstream hop");
    assert_eq!(header(&h, "x-flag-color").as_deref(), Some("blue"));
    assert_eq!(header(&h, "x-rampart-override").as_deref(), Some(qa.as_str()), "a valid override travels on");
    assert_eq!(counter(sc.admin, r#"rampart_overrides_applied_total{flag="new-checkout"}"#).await, 1.0);

    // An assignments token is not an override, and an override signed with another key is nothing.
    let other = Key::new(b"somebody else's secret, 32+ bytes long").unwrap();
    for (token, reason) in [
        (sign(&key(), Kind::Assignments, now + 60, &[("new-checkout", "on")]), "unsigned"),
        (sign(&other, Kind::Override, now + 60, &[("new-checkout", "on")]), "signature"),
    ] {
        let h = seen(&sc.url("/"), &[("x-user-id", "u-1"), ("x-rampart-override", &token)]).await;
        assert_eq!(header(&h, "x-flag-new-checkout").as_deref(), Some("off"), "{reason}");
        assert_eq!(header(&h, "x-rampart-override"), None, "{reason}");
        let sample = format!("rampart_overrides_rejected_total{{reason=\"{reason}\"}}");
        assert_eq!(counter(sc.admin, &sample).await, 1.0, "{sample}");
    }
}

#[tokio::test]
async fn client_forged_headers_are_stripped() {
    let up = upstream().await;
    let context = "[context]\ntargetingKey = \"header:x-user-id\"\n";
    let plain = sidecar(up.addr, &flags(0, false), context).await;
    let forged = sign(
        &Key::new(b"a guess at the secret, 32+ bytes long").unwrap(),
        Kind::Override,
        unix_now() + 60,
        &[("new-checkout", "on")],
    );
    let headers = [("x-user-id", "u-1"), ("x-rampart-assignments", "new-checkout=on"), ("x-rampart-override", &forged)];
    let h = seen(&plain.url("/"), &headers).await;
    assert_eq!(header(&h, "x-flag-new-checkout").as_deref(), Some("off"));
    assert_eq!(header(&h, "x-rampart-assignments"), None, "without [propagation] nothing is forwarded");
    assert_eq!(header(&h, "x-rampart-override"), None);

    let keyed = sidecar(up.addr, &flags(0, false), PROPAGATION).await;
    let h = seen(&keyed.url("/"), &headers).await;
    assert_eq!(header(&h, "x-flag-new-checkout").as_deref(), Some("off"));
    assert_eq!(header(&h, "x-rampart-override"), None);
    assert_eq!(assignments(&header(&h, "x-rampart-assignments").unwrap()), [("new-checkout".into(), "off".into())]);
    assert_eq!(counter(keyed.admin, r#"rampart_overrides_rejected_total{reason="signature"}"#).await, 1.0);
}
