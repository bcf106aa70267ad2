use std::time::Duration;

use http::Request;
use proptest::prelude::*;
use rampart_stats::Registry;

use super::*;
use crate::config::{Attribute, Source};
use crate::inject::inject_flags;
use crate::snapshot::{Outputs, Snapshot};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
const NOW: u64 = 1_700_000_000;

fn key() -> Key {
    Key::new(SECRET).unwrap()
}

fn text(token: &[u8]) -> Vec<(String, String)> {
    let s = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
    pairs(token).map(|(f, v)| (s(f), s(v))).collect()
}

#[test]
fn signs_and_opens_with_canonical_encoding() {
    let token = sign(&key(), Kind::Assignments, NOW + 60, &[("new-checkout", "on"), ("odd,flag=", "a b.%é")]);
    assert!(token.starts_with(&format!("v1.{}.new-checkout=on,odd%2Cflag%3D=a%20b.%25%C3%A9.", NOW + 60)), "{token}");
    assert!(HeaderValue::from_str(&token).is_ok());
    let body = open(&key(), Kind::Assignments, token.as_bytes(), NOW).unwrap();
    assert_eq!(text(body), [("new-checkout".into(), "on".into()), ("odd%2Cflag%3D".into(), "a%20b.%25%C3%A9".into())]);
    let empty = sign(&key(), Kind::Override, NOW, &[]);
    assert_eq!(open(&key(), Kind::Override, empty.as_bytes(), NOW), Ok(&b""[..]), "valid until its second ends");
}

#[test]
fn tampered_expired_foreign_and_malformed_tokens_are_refused() {
    let token = sign(&key(), Kind::Assignments, NOW + 60, &[("new-checkout", "off")]);
    fn open_str(t: &str) -> Result<&[u8], Reject> {
        open(&key(), Kind::Assignments, t.as_bytes(), NOW)
    }
    assert_eq!(open_str(&token.replace("=off", "=on_")), Err(Reject::Signature), "variant changed");
    assert_eq!(open_str(&token.replace(&(NOW + 60).to_string(), &(NOW + 99).to_string())), Err(Reject::Signature));
    let other = Key::new(b"another secret of at least 32 bytes!").unwrap();
    assert_eq!(open(&other, Kind::Assignments, token.as_bytes(), NOW), Err(Reject::Signature), "wrong key");
    assert_eq!(open_str(&token), Ok(&b"new-checkout=off"[..]));

    let old = sign(&key(), Kind::Assignments, NOW - 1, &[("new-checkout", "on")]);
    assert_eq!(open_str(&old), Err(Reject::Expired));
    let forged = old.replace(&(NOW - 1).to_string(), &(NOW + 1).to_string());
    assert_eq!(open_str(&forged), Err(Reject::Signature), "an expired token cannot be revived");

    // One kind never passes for the other, even with the prefix swapped.
    assert_eq!(open(&key(), Kind::Override, token.as_bytes(), NOW), Err(Reject::Unsigned));
    assert_eq!(open(&key(), Kind::Override, token.replacen("v1", "o1", 1).as_bytes(), NOW), Err(Reject::Signature));

    for bad in ["", "new-checkout=on", "v1", "v1.", "v1.123", "v1.123.a=b", "o1.1.a=b.sig"] {
        assert_eq!(open_str(bad), Err(Reject::Unsigned), "{bad:?}");
    }
    let tag = token.rsplit('.').next().unwrap();
    for bad in [format!("v1.soon.a=b.{tag}"), format!("v1.-1.a=b.{tag}"), "v1.1.a=b.short".to_owned()] {
        assert_eq!(open_str(&bad), Err(Reject::Malformed), "{bad:?}");
    }
    assert_eq!(open_str(&format!("{token}x")), Err(Reject::Malformed));
}

#[test]
fn keys_are_long_enough_and_read_without_the_trailing_newline() {
    assert!(matches!(Key::new(b"short"), Err(KeyError::Short { len: 5 })));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    std::fs::write(&path, [SECRET, b"\n"].concat()).unwrap();
    let from_file = Key::from_file(&path).unwrap();
    let token = sign(&from_file, Kind::Override, NOW, &[("a", "b")]);
    assert!(open(&key(), Kind::Override, token.as_bytes(), NOW).is_ok(), "the newline is not part of the key");
    assert!(matches!(Key::from_file(&dir.path().join("missing")), Err(KeyError::Read { .. })));
    assert_eq!(format!("{:?}", key()), "Key(..)", "Debug never shows the secret");
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_open(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        prop_assert!(open(&key(), Kind::Assignments, &bytes, 0).is_err());
        prop_assert!(open(&key(), Kind::Override, &bytes, 0).is_err());
    }

    #[test]
    fn any_change_to_a_token_breaks_it(at in any::<prop::sample::Index>(), to in any::<u8>()) {
        let token = sign(&key(), Kind::Assignments, NOW + 60, &[("new-checkout", "on"), ("color", "blue")]);
        let mut bytes = token.into_bytes();
        let i = at.index(bytes.len());
        prop_assume!(bytes[i] != to);
        bytes[i] = to;
        prop_assert!(open(&key(), Kind::Assignments, &bytes, NOW).is_err());
    }

    #[test]
    fn names_round_trip(flag in "\\PC{0,12}", variant in "\\PC{0,12}") {
        let token = sign(&key(), Kind::Assignments, NOW, &[(&flag, &variant)]);
        prop_assert!(HeaderValue::from_str(&token).is_ok());
        let body = open(&key(), Kind::Assignments, token.as_bytes(), NOW).unwrap();
        let (mut f, mut v) = (Vec::new(), Vec::new());
        encode(&mut f, &flag);
        encode(&mut v, &variant);
        prop_assert_eq!(pairs(body).collect::<Vec<_>>(), vec![(&f[..], &v[..])]);
    }
}

const FLAGS: &str = r#"
flags:
  new-checkout:
    state: ENABLED
    variants: { "on": true, "off": false }
    defaultVariant: "off"
  color:
    state: ENABLED
    variants: { red: r, blue: b }
    defaultVariant: red
  killed:
    state: DISABLED
    variants: { "on": true, "off": false }
    defaultVariant: "off"
"#;

fn settings() -> Propagation {
    Propagation {
        key: key(),
        header: HeaderName::from_static(ASSIGNMENTS_HEADER),
        override_header: HeaderName::from_static(OVERRIDE_HEADER),
        ttl: Duration::from_secs(60),
        trust: true,
        emit: true,
        overrides: true,
    }
}

fn snapshot(settings: &Propagation) -> Snapshot {
    let (metrics, stats) = (Metrics::new(), Registry::new(10));
    let out = Outputs { prefix: "x-flag-", inject: None, metrics: &metrics, stats: &stats };
    let mut s = Snapshot::build(1, FlagSet::from_str("f.yaml", FLAGS).unwrap(), out).unwrap();
    s.propagation = Some(Prepared::build(settings, &s.flags, &s.injected, &metrics));
    s
}

/// Runs `inject_flags` on a request with `headers`; returns the request's headers after it.
fn inject(snapshot: &Snapshot, headers: &[(&str, &str)]) -> HeaderMap {
    let context = [Attribute { name: "targetingKey".into(), sources: vec![Source::Method] }];
    let mut req = Request::get("/").body(()).unwrap();
    for (k, v) in headers {
        req.headers_mut().append(HeaderName::try_from(*k).unwrap(), HeaderValue::from_str(v).unwrap());
    }
    inject_flags(snapshot, &context, "x-flag-", &mut req);
    req.headers().clone()
}

fn emitted(h: &HeaderMap) -> Vec<(String, String)> {
    let token = h.get(ASSIGNMENTS_HEADER).expect("an assignments header").as_bytes();
    text(open(&key(), Kind::Assignments, token, unix_now()).expect("a valid token"))
}

#[test]
fn upstream_assignments_are_reused_and_overrides_win() {
    let s = snapshot(&settings());
    let now = unix_now();
    let upstream = sign(
        &key(),
        Kind::Assignments,
        now + 5,
        &[("new-checkout", "on"), ("color", "green"), ("killed", "on"), ("elsewhere", "x")],
    );
    let h = inject(&s, &[(ASSIGNMENTS_HEADER, &upstream)]);
    assert_eq!(h["x-flag-new-checkout"], "on", "reused, though this sidecar would evaluate \"off\"");
    assert_eq!(h["x-flag-color"], "red", "an unknown variant is evaluated afresh");
    assert!(h.get("x-flag-killed").is_none(), "a disabled flag stays disabled");
    let pairs = emitted(&h);
    for pair in [("new-checkout", "on"), ("color", "red"), ("elsewhere", "x")] {
        assert!(pairs.contains(&(pair.0.into(), pair.1.into())), "{pair:?} in {pairs:?}");
    }
    assert_eq!(pairs.len(), 3, "{pairs:?}");

    let qa = sign(&key(), Kind::Override, now + 5, &[("new-checkout", "off"), ("color", "blue")]);
    let h = inject(&s, &[(ASSIGNMENTS_HEADER, &upstream), (OVERRIDE_HEADER, &qa)]);
    assert_eq!((&h["x-flag-new-checkout"], &h["x-flag-color"]), (&"off".parse().unwrap(), &"blue".parse().unwrap()));
    assert_eq!(h[OVERRIDE_HEADER], qa.as_str(), "a valid override travels on");
    assert!(emitted(&h).contains(&("color".into(), "blue".into())));
}

#[test]
fn bad_or_unaccepted_headers_are_removed() {
    let s = snapshot(&settings());
    let now = unix_now();
    let forged = "v1.9999999999.new-checkout=on.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let h = inject(&s, &[(ASSIGNMENTS_HEADER, forged), (OVERRIDE_HEADER, "new-checkout=on")]);
    assert_eq!(h["x-flag-new-checkout"], "off");
    assert!(h.get(OVERRIDE_HEADER).is_none());
    assert_eq!(emitted(&h), [("new-checkout".into(), "off".into()), ("color".into(), "red".into())]);

    let good = sign(&key(), Kind::Assignments, now + 5, &[("new-checkout", "on")]);
    let h = inject(&s, &[(ASSIGNMENTS_HEADER, &good), (ASSIGNMENTS_HEADER, &good)]);
    assert_eq!(h["x-flag-new-checkout"], "off", "two values are refused");

    let s = snapshot(&Propagation { trust: false, emit: false, overrides: false, ..settings() });
    let qa = sign(&key(), Kind::Override, now + 5, &[("new-checkout", "on")]);
    let h = inject(&s, &[(ASSIGNMENTS_HEADER, &good), (OVERRIDE_HEADER, &qa)]);
    assert_eq!(h["x-flag-new-checkout"], "off");
    assert!(h.get(ASSIGNMENTS_HEADER).is_none() && h.get(OVERRIDE_HEADER).is_none(), "{h:?}");
}

#[test]
fn without_propagation_neither_header_passes() {
    let mut s = snapshot(&settings());
    s.propagation = None;
    let good = sign(&key(), Kind::Assignments, unix_now() + 5, &[("new-checkout", "on")]);
    let h = inject(&s, &[(ASSIGNMENTS_HEADER, &good), (OVERRIDE_HEADER, "x")]);
    assert_eq!(h["x-flag-new-checkout"], "off");
    assert!(h.get(ASSIGNMENTS_HEADER).is_none() && h.get(OVERRIDE_HEADER).is_none(), "{h:?}");
}
