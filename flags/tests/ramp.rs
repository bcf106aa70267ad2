//! The ramp's split names its unit: `Resolution::unit` is the unit's id exactly when the reason
//! is `SPLIT`, and never for targeting matches, a missing bucketing key or other flags.

use rampart_flags::{BUCKETS, Bucketer, Bump, Context, FlagSet, Reason, percent_to_threshold};

const FLAGS: &str = r#"
flags:
  new-checkout:
    state: ENABLED
    variants: { "on": true, "off": false }
    defaultVariant: "off"
    targeting: { "if": [{ "==": [{ "var": "country" }, "NL"] }, "on", null] }
    ramp: { treatment: "on", percent: 50, bucketBy: userId, slowUs: 200000 }
  plain:
    state: ENABLED
    variants: { "on": true, "off": false }
    defaultVariant: "off"
"#;

#[test]
fn split_resolutions_carry_the_bucketing_hash() {
    let set = FlagSet::from_str("flags.yaml", FLAGS).unwrap();
    let ramp = set.get("new-checkout").and_then(|f| f.ramp()).unwrap();
    assert_eq!(ramp.slow_us(), Some(200_000));
    let bucketer = Bucketer::for_flag("new-checkout");
    let threshold = percent_to_threshold(50.0);
    let arena = Bump::new();
    let mut treated = 0;
    for i in 0..1_000 {
        let user = format!("user-{i}");
        let ctx = Context::builder(&arena).attr("userId", &user).attr("country", "DE").build();
        let r = set.evaluate("new-checkout", &ctx, &arena);
        assert_eq!(r.reason, Reason::Split);
        assert_eq!(r.unit, Some(bucketer.unit_id(user.as_bytes())), "the unit is named by its id");
        let bucket = bucketer.bucket(user.as_bytes());
        assert!(bucket < BUCKETS);
        let on = bucket < threshold;
        assert_eq!(r.variant_name(), Some(if on { "on" } else { "off" }));
        treated += usize::from(on);
        assert_eq!(set.evaluate("plain", &ctx, &arena).unit, None);
    }
    assert!((400..600).contains(&treated), "{treated} of 1000 treated at 50 %");

    let targeted = Context::builder(&arena).attr("userId", "user-1").attr("country", "NL").build();
    let r = set.evaluate("new-checkout", &targeted, &arena);
    assert_eq!((r.reason, r.unit), (Reason::TargetingMatch, None), "targeting is not randomised");

    let keyless = Context::builder(&arena).targeting_key("user-1").attr("country", "DE").build();
    let r = set.evaluate("new-checkout", &keyless, &arena);
    assert_eq!((r.reason, r.unit, r.variant_name()), (Reason::Default, None, Some("off")), "no bucketing key");
}
