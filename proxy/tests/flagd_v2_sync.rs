//! flagd's current APIs on the sidecar's query port, asked by real clients on real sockets:
//! `flagd.evaluation.v2.Service` (zero values sent explicitly, disabled flags without a value,
//! `EventStream` naming only the flags that changed) and `flagd.sync.v1.FlagSyncService` (the
//! Rust `open-feature-flagd` provider in in-process mode evaluates the synced flags and agrees
//! with the sidecar's `x-flag-*` header on every context).

mod support;

use std::time::{Duration, Instant};

use http::StatusCode;
use open_feature::{EvaluationContext, OpenFeature};
use open_feature_flagd::{FlagdOptions, FlagdProvider, ResolverType};
use prost_types::value::Kind;
use rampart_proto::flagd::evaluation::v2;
use rampart_proto::flagd::evaluation::v2::service_client::ServiceClient;
use rampart_proto::flagd::sync::v1 as sync;
use rampart_proto::flagd::sync::v1::flag_sync_service_client::FlagSyncServiceClient;
use serde_json::{Value, json};
use support::*;

const FLAGS: &str = r#"
metadata: { flagSetId: shop, team: core }
flags:
  off-switch:
    state: ENABLED
    variants: { "on": true, "off": false }
    defaultVariant: "off"
  empty-text:
    state: ENABLED
    variants: { none: "", some: "x" }
    defaultVariant: none
  zero:
    state: ENABLED
    variants: { zero: 0, one: 1 }
    defaultVariant: zero
    metadata: { team: web }
  old-banner:
    state: DISABLED
    variants: { "on": true, "off": false }
    defaultVariant: "on"
  checkout:
    state: ENABLED
    variants: { "on": true, "off": false }
    defaultVariant: "off"
    ramp: { treatment: "on", percent: 37 }
  ops-only:
    state: ENABLED
    variants: { a: "a" }
    defaultVariant: a
    metadata: { flagSetId: ops }
"#;

async fn channel(addr: std::net::SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap()
}

fn bool_req(key: &str) -> v2::ResolveBooleanRequest {
    v2::ResolveBooleanRequest { flag_key: key.to_owned(), context: None }
}

#[tokio::test]
async fn v2_sends_zero_values_and_no_value_for_disabled_flags() {
    let up = upstream().await;
    let q = sidecar_with_queries(up.addr, FLAGS, "").await;
    let mut c = ServiceClient::new(channel(q.grpc).await);

    let b = c.resolve_boolean(bool_req("off-switch")).await.unwrap().into_inner();
    assert_eq!((b.value, b.variant.as_deref(), b.reason.as_str()), (Some(false), Some("off"), "STATIC"));
    let s = c
        .resolve_string(v2::ResolveStringRequest { flag_key: "empty-text".into(), context: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.value.as_deref(), Some(""), "an empty string is sent, not left out");
    let i = c.resolve_int(v2::ResolveIntRequest { flag_key: "zero".into(), context: None }).await.unwrap().into_inner();
    assert_eq!(i.value, Some(0));
    let meta = i.metadata.unwrap().fields;
    assert!(matches!(&meta["team"].kind, Some(Kind::StringValue(t)) if t == "web"), "the flag's metadata wins");
    assert!(matches!(&meta["flagSetId"].kind, Some(Kind::StringValue(t)) if t == "shop"), "merged with the set's");
    let f = c.resolve_float(v2::ResolveFloatRequest { flag_key: "zero".into(), context: None }).await.unwrap();
    assert_eq!(f.into_inner().value, Some(0.0));

    let d = c.resolve_boolean(bool_req("old-banner")).await.unwrap().into_inner();
    assert_eq!((d.value, d.variant, d.reason.as_str()), (None, None, "DISABLED"), "the caller's default applies");

    assert_eq!(c.resolve_boolean(bool_req("nope")).await.unwrap_err().code(), tonic::Code::NotFound);
    assert_eq!(c.resolve_boolean(bool_req("zero")).await.unwrap_err().code(), tonic::Code::InvalidArgument);

    let url = |m: &str| format!("http://{}/flagd.evaluation.v2.Service/{m}", q.grpc);
    let (status, _, body) = post_json(&url("ResolveBoolean"), r#"{"flagKey":"old-banner"}"#, &[]).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"reason": "DISABLED", "metadata": {"flagSetId": "shop", "team": "core"}}))
    );
    let (_, _, body) = post_json(&url("ResolveBoolean"), r#"{"flagKey":"off-switch"}"#, &[]).await;
    assert_eq!((&body["value"], &body["variant"]), (&json!(false), &json!("off")));
}

#[tokio::test]
async fn v2_event_stream_names_only_flags_that_changed_in_value() {
    let up = upstream().await;
    let q = sidecar_with_queries(up.addr, FLAGS, "").await;
    let mut c = ServiceClient::new(channel(q.grpc).await);
    let mut events = c.event_stream(v2::EventStreamRequest {}).await.unwrap().into_inner();
    assert_eq!(events.message().await.unwrap().unwrap().r#type, "provider_ready");
    // `0` rewritten as `0.0` changes nothing; the default of `off-switch` does.
    let changed = FLAGS
        .replace("zero: 0,", "zero: 0.0,")
        .replace("defaultVariant: \"off\"\n  empty", "defaultVariant: \"on\"\n  empty");
    assert_ne!(changed, FLAGS);
    replace_file(&q.sc.flags_path(), &changed);
    let change = loop {
        let e = tokio::time::timeout(Duration::from_secs(5), events.message()).await.unwrap().unwrap().unwrap();
        if e.r#type == "configuration_change" {
            break e;
        }
    };
    let data = change.data.unwrap().fields;
    let Some(Kind::StructValue(flags)) = &data["flags"].kind else { panic!("{data:?}") };
    assert_eq!(flags.fields.keys().collect::<Vec<_>>(), ["off-switch"]);
}

fn document(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

#[tokio::test]
async fn sync_streams_the_flags_with_ramps_as_fractional_and_every_change() {
    let up = upstream().await;
    let q = sidecar_with_queries(up.addr, FLAGS, "").await;
    let mut c = FlagSyncServiceClient::new(channel(q.grpc).await);
    let req = sync::SyncFlagsRequest { provider_id: "test".into(), selector: String::new() };
    let mut stream = c.sync_flags(req).await.unwrap().into_inner();
    let first = document(&stream.message().await.unwrap().unwrap().flag_configuration);
    assert_eq!(first["flags"]["checkout"]["targeting"], json!({"fractional": [["on", 37000], ["off", 63000]]}));
    assert!(first["flags"]["checkout"].get("ramp").is_none());
    assert_eq!(first["flags"]["old-banner"]["state"], "DISABLED");

    let started = Instant::now();
    replace_file(&q.sc.flags_path(), &FLAGS.replace("percent: 37", "percent: 40"));
    let next = tokio::time::timeout(Duration::from_secs(1), stream.message()).await.expect("a change within 1 s");
    let next = document(&next.unwrap().unwrap().flag_configuration);
    assert_eq!(next["flags"]["checkout"]["targeting"]["fractional"][0], json!(["on", 40000]));
    assert!(started.elapsed() < Duration::from_secs(1));

    let shop = sync::FetchAllFlagsRequest { provider_id: String::new(), selector: "flagSetId=ops".into() };
    let ops = document(&c.fetch_all_flags(shop).await.unwrap().into_inner().flag_configuration);
    assert_eq!(ops["flags"].as_object().unwrap().keys().collect::<Vec<_>>(), ["ops-only"]);
    let mut by_header = tonic::Request::new(sync::FetchAllFlagsRequest::default());
    by_header.metadata_mut().insert("flagd-selector", "flagSetId=ops".parse().unwrap());
    let ops = document(&c.fetch_all_flags(by_header).await.unwrap().into_inner().flag_configuration);
    assert_eq!(ops["flags"].as_object().unwrap().len(), 1, "the selector may come as a header");
    #[allow(deprecated)]
    let meta = c.get_metadata(sync::GetMetadataRequest {}).await.unwrap().into_inner().metadata.unwrap();
    assert!(matches!(&meta.fields["flagSetId"].kind, Some(Kind::StringValue(s)) if s == "shop"));
}

/// The Rust flagd provider in in-process mode, synced from the sidecar, assigns the same variant
/// as the sidecar's header for 10 000 units at a 37 % ramp, and sees a change within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_provider_agrees_with_the_header_on_10000_units() {
    let up = upstream().await;
    let q = sidecar_with_queries(up.addr, FLAGS, "").await;
    let options = FlagdOptions {
        host: "127.0.0.1".to_owned(),
        port: q.grpc.port(),
        resolver_type: ResolverType::InProcess,
        deadline_ms: 2000,
        cache_settings: None,
        ..Default::default()
    };
    let provider = FlagdProvider::new(options).await.unwrap();
    OpenFeature::singleton_mut().await.set_named_provider("in-process", provider).await;
    let client = OpenFeature::singleton().await.create_named_client("in-process");
    let mut treated = 0;
    let mut first_control = None;
    for i in 0..10_000 {
        let user = format!("user-{i}");
        let ctx = EvaluationContext::default().with_targeting_key(user.as_str());
        let local = client.get_bool_details("checkout", Some(&ctx), None).await.unwrap();
        let proxied = header(&seen(&q.sc.url("/"), &[("x-user-id", &user)]).await, "x-flag-checkout");
        assert_eq!(local.variant, proxied, "{user}");
        treated += usize::from(local.value);
        if !local.value && first_control.is_none() {
            first_control = Some(ctx);
        }
    }
    assert!((3_500..3_900).contains(&treated), "37 % of 10 000 units: {treated}");

    let control = first_control.unwrap();
    let started = Instant::now();
    replace_file(&q.sc.flags_path(), &FLAGS.replace("percent: 37", "percent: 100"));
    let seen_in_time = eventually(Duration::from_secs(1), || async {
        client.get_bool_value("checkout", Some(&control), None).await.unwrap_or(false)
    })
    .await;
    assert!(seen_in_time, "the change reached the in-process client within a second ({:?})", started.elapsed());
}

/// `Flagd-Selector` on an evaluation limits it to one flag set, named by `flagSetId` in the
/// flag's or the set's metadata; flags of other sets are not found.
#[tokio::test]
async fn the_flagd_selector_header_selects_one_flag_set() {
    let up = upstream().await;
    let q = sidecar_with_queries(up.addr, FLAGS, "").await;
    let mut c = ServiceClient::new(channel(q.grpc).await);
    let selected = |key: &str| {
        let mut req = tonic::Request::new(bool_req(key));
        req.metadata_mut().insert("flagd-selector", "flagSetId=shop".parse().unwrap());
        req
    };
    assert!(c.resolve_boolean(selected("off-switch")).await.is_ok());
    let mut req = tonic::Request::new(v2::ResolveStringRequest { flag_key: "ops-only".into(), context: None });
    req.metadata_mut().insert("flagd-selector", "flagSetId=shop".parse().unwrap());
    assert_eq!(c.resolve_string(req).await.unwrap_err().code(), tonic::Code::NotFound, "another set's flag");

    let bulk = format!("http://{}/ofrep/v1/evaluate/flags", q.ofrep);
    let (status, _, all) = post_json(&bulk, "{}", &[("flagd-selector", "flagSetId=ops")]).await;
    assert_eq!(status, StatusCode::OK);
    let keys: Vec<&str> = all["flags"].as_array().unwrap().iter().map(|f| f["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["ops-only"]);
    let one = format!("http://{}/ofrep/v1/evaluate/flags/zero", q.ofrep);
    let (status, _, _) = post_json(&one, "{}", &[("flagd-selector", "flagSetId=ops")]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
