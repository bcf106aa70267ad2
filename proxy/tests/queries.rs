//! Flag queries against a running sidecar, asked by independent OpenFeature clients: the Rust
//! `open-feature` SDK with the `open-feature-flagd` provider in RPC mode (TCP and unix socket) and
//! in REST/OFREP mode, the provider crate's own client generated from flagd's schema (for
//! `ResolveAll`, status codes and `EventStream`), and plain HTTP for Connect and OFREP.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use open_feature::{EvaluationContext, EvaluationErrorCode, EvaluationReason, OpenFeature, StructValue};
use open_feature_flagd::flagd::evaluation::v1 as flagd;
use open_feature_flagd::flagd::evaluation::v1::service_client::ServiceClient;
use open_feature_flagd::{FlagdOptions, FlagdProvider, ResolverType};
use serde_json::json;
use support::*;

const FLAGS: &str = r##"
metadata: { flagSetId: shop }
flags:
  new-checkout:
    state: ENABLED
    variants: { "on": true, "off": false }
    defaultVariant: "off"
    ramp: { treatment: "on", percent: 50 }
    metadata: { team: payments }
  search-backend:
    state: ENABLED
    variants: { v1: "solr", v2: "elastic" }
    defaultVariant: v1
    targeting: { "if": [{ "==": [{ "var": "email" }, "ann@example.com"] }, "v2", null] }
  discount:
    state: ENABLED
    variants: { none: 0, some: 0.15 }
    defaultVariant: some
  max-items:
    state: ENABLED
    variants: { small: 10, big: 100 }
    defaultVariant: big
  theme:
    state: ENABLED
    variants: { dark: { bg: "#000", contrast: 7 }, light: { bg: "#fff", contrast: 4 } }
    defaultVariant: dark
  old-banner:
    state: DISABLED
    variants: { "on": true, "off": false }
    defaultVariant: "off"
  gold-only:
    state: ENABLED
    variants: { "yes": true, "no": false }
    defaultVariant: "no"
    targeting: { "if": [{ "and": [{ "==": [{ "var": "tier" }, "gold"] }, { "==": [{ "var": "email" }, "bo@example.com"] }] }, "yes", null] }
"##;

fn options(resolver_type: ResolverType, port: u16) -> FlagdOptions {
    FlagdOptions {
        host: "127.0.0.1".to_owned(),
        port,
        resolver_type,
        deadline_ms: 2000,
        retry_grace_period: 1,
        cache_settings: None,
        ..Default::default()
    }
}

/// An OpenFeature client named `name` whose provider is `provider`.
async fn openfeature_client(name: &str, provider: FlagdProvider) -> open_feature::Client {
    OpenFeature::singleton_mut().await.set_named_provider(name, provider).await;
    OpenFeature::singleton().await.create_named_client(name)
}

fn ctx(targeting_key: &str) -> EvaluationContext {
    EvaluationContext::default().with_targeting_key(targeting_key)
}

fn other(reason: &str) -> Option<EvaluationReason> {
    Some(EvaluationReason::Other(reason.to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_provider_resolves_every_type_with_flagd_reasons_and_errors() {
    let up = upstream().await;
    let q = sidecar_with_queries(up.addr, FLAGS, "").await;
    let provider = FlagdProvider::new(options(ResolverType::Rpc, q.grpc.port())).await.unwrap();
    let client = openfeature_client("rpc", provider).await;

    let b = client.get_bool_details("new-checkout", Some(&ctx("user-1")), None).await.unwrap();
    assert_eq!(b.reason, other("SPLIT"));
    assert_eq!(b.variant.as_deref(), Some(if b.value { "on" } else { "off" }));
    let meta = b.flag_metadata.values;
    assert_eq!(meta.get("team"), Some(&open_feature::FlagMetadataValue::String("payments".into())), "flag metadata");
    assert_eq!(meta.get("flagSetId"), Some(&open_feature::FlagMetadataValue::String("shop".into())), "set metadata");

    let ann = ctx("u").with_custom_field("email", "ann@example.com");
    let s = client.get_string_details("search-backend", Some(&ann), None).await.unwrap();
    assert_eq!((s.value.as_str(), s.variant.as_deref(), s.reason), ("elastic", Some("v2"), other("TARGETING_MATCH")));
    let s = client.get_string_details("search-backend", Some(&ctx("u")), None).await.unwrap();
    assert_eq!((s.value.as_str(), s.variant.as_deref(), s.reason), ("solr", Some("v1"), other("DEFAULT")));

    let f = client.get_float_details("discount", None, None).await.unwrap();
    assert_eq!((f.value, f.variant.as_deref(), f.reason), (0.15, Some("some"), other("STATIC")));
    let i = client.get_int_details("max-items", None, None).await.unwrap();
    assert_eq!((i.value, i.variant.as_deref(), i.reason), (100, Some("big"), other("STATIC")));
    let o = client.get_struct_details::<StructValue>("theme", None, None).await.unwrap();
    assert_eq!(o.variant.as_deref(), Some("dark"));
    assert_eq!(o.value.fields.get("bg").and_then(|v| v.as_str()), Some("#000"));
    assert_eq!(o.value.fields.get("contrast").and_then(|v| v.as_f64()), Some(7.0));

    let e = client.get_bool_details("no-such-flag", None, None).await.unwrap_err();
    assert_eq!(e.code, EvaluationErrorCode::FlagNotFound);
    // Current flagd: a disabled flag is a success with reason DISABLED and no variant (v1 carries
    // the zero value, which this provider passes on as it is).
    let d = client.get_bool_details("old-banner", None, None).await.unwrap();
    assert_eq!((d.value, d.variant.as_deref(), d.reason), (false, Some(""), other("DISABLED")));
    // The provider maps gRPC INVALID_ARGUMENT (flagd's type mismatch) to INVALID_CONTEXT.
    let e = client.get_string_details("new-checkout", None, None).await.unwrap_err();
    assert_eq!(e.code, EvaluationErrorCode::InvalidContext);
    assert_eq!(e.message.as_deref(), Some("Type mismatch error"));
    assert!(client.get_int_details("search-backend", None, None).await.is_err());

    // The same service on the unix socket.
    let mut opts = options(ResolverType::Rpc, 0);
    opts.socket_path = Some(q.socket.display().to_string());
    let unix = openfeature_client("rpc-unix", FlagdProvider::new(opts).await.unwrap()).await;
    assert_eq!(unix.get_int_value("max-items", None, None).await.unwrap(), 100);
}

/// flagd's own generated client (shipped inside the provider crate) on a plain channel.
async fn flagd_client(addr: SocketAddr) -> ServiceClient<tonic::transport::Channel> {
    ServiceClient::connect(format!("http://{addr}")).await.unwrap()
}

fn pb_struct(v: &serde_json::Value) -> prost_types::Struct {
    let fields: BTreeMap<String, prost_types::Value> = v
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let kind = prost_types::value::Kind::StringValue(v.as_str().unwrap().to_owned());
            (k.clone(), prost_types::Value { kind: Some(kind) })
        })
        .collect();
    prost_types::Struct { fields }
}

#[tokio::test]
async fn grpc_status_codes_and_resolve_all_match_flagd() {
    let up = upstream().await;
    let q = sidecar_with_queries(up.addr, FLAGS, "").await;
    let mut c = flagd_client(q.grpc).await;
    let req = |key: &str| flagd::ResolveBooleanRequest { flag_key: key.to_owned(), context: None };
    assert_eq!(c.resolve_boolean(req("nope")).await.unwrap_err().code(), tonic::Code::NotFound);
    let disabled = c.resolve_boolean(req("old-banner")).await.unwrap().into_inner();
    assert_eq!((disabled.value, disabled.reason.as_str(), disabled.variant.as_str()), (false, "DISABLED", ""));
    assert_eq!(c.resolve_boolean(req("max-items")).await.unwrap_err().code(), tonic::Code::InvalidArgument);
    let int = c.resolve_int(flagd::ResolveIntRequest { flag_key: "max-items".into(), context: None }).await.unwrap();
    assert_eq!(int.into_inner().value, 100);

    let all = c
        .resolve_all(flagd::ResolveAllRequest { context: Some(pb_struct(&json!({"targetingKey": "user-1"}))) })
        .await
        .unwrap()
        .into_inner();
    let mut keys: Vec<&str> = all.flags.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["discount", "gold-only", "max-items", "new-checkout", "old-banner", "search-backend", "theme"],
        "disabled flags are listed, as current flagd lists them"
    );
    let old = &all.flags["old-banner"];
    assert_eq!((old.reason.as_str(), old.variant.as_str(), &old.value), ("DISABLED", "", &None));
    let max = &all.flags["max-items"];
    assert_eq!((max.reason.as_str(), max.variant.as_str()), ("STATIC", "big"));
    assert_eq!(max.value, Some(flagd::any_flag::Value::DoubleValue(100.0)));
    assert_eq!(all.flags["new-checkout"].reason, "SPLIT");
    let set = all.metadata.unwrap();
    assert!(matches!(&set.fields["flagSetId"].kind, Some(prost_types::value::Kind::StringValue(s)) if s == "shop"));
}

async fn next(events: &mut tonic::Streaming<flagd::EventStreamResponse>) -> flagd::EventStreamResponse {
    tokio::time::timeout(Duration::from_secs(3), events.message()).await.unwrap().unwrap().unwrap()
}

fn event_data_flags(e: &flagd::EventStreamResponse) -> BTreeMap<String, String> {
    let Some(prost_types::value::Kind::StructValue(flags)) =
        e.data.as_ref().and_then(|d| d.fields.get("flags")).and_then(|v| v.kind.clone())
    else {
        panic!("configuration_change without data.flags: {e:?}")
    };
    flags
        .fields
        .into_iter()
        .map(|(k, v)| {
            let Some(prost_types::value::Kind::StructValue(s)) = v.kind else { panic!("{k}: {v:?}") };
            let Some(prost_types::value::Kind::StringValue(t)) = s.fields["type"].kind.clone() else { panic!() };
            (k, t)
        })
        .collect()
}

#[tokio::test]
async fn event_stream_sends_ready_then_the_changed_flags_after_a_reload_and_keep_alives() {
    let up = upstream().await;
    let q = sidecar_with_queries(up.addr, FLAGS, "[queries]\nkeep_alive = \"150ms\"\n").await;
    let mut c = flagd_client(q.grpc).await;
    let mut events = c.event_stream(flagd::EventStreamRequest {}).await.unwrap().into_inner();
    let first = tokio::time::timeout(Duration::from_secs(2), events.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.r#type, "provider_ready");

    assert_eq!(next(&mut events).await.r#type, "keep_alive");

    let changed = FLAGS
        .replace("percent: 50", "percent: 60")
        .replace("  theme:", "  added:\n    state: ENABLED\n    variants: { a: 1 }\n    defaultVariant: a\n  theme:");
    replace_file(&q.sc.flags_path(), &changed);
    let change = loop {
        let e = next(&mut events).await;
        if e.r#type == "configuration_change" {
            break e;
        }
        assert_eq!(e.r#type, "keep_alive");
    };
    let flags = event_data_flags(&change);
    assert_eq!(
        flags,
        BTreeMap::from([("added".to_owned(), "write".to_owned()), ("new-checkout".to_owned(), "update".to_owned())])
    );
    // And the new flags are what queries see now.
    let added = c.resolve_int(flagd::ResolveIntRequest { flag_key: "added".into(), context: None }).await.unwrap();
    assert_eq!(added.into_inner().variant, "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_provider_evaluates_over_ofrep() {
    let up = upstream().await;
    let q = sidecar_with_queries(up.addr, FLAGS, "").await;
    let provider = FlagdProvider::new(options(ResolverType::Rest, q.ofrep.port())).await.unwrap();
    let client = openfeature_client("rest", provider).await;

    let b = client.get_bool_details("new-checkout", Some(&ctx("user-1")), None).await.unwrap();
    assert_eq!(b.variant.as_deref(), Some(if b.value { "on" } else { "off" }));
    let ann = ctx("u").with_custom_field("email", "ann@example.com");
    let s = client.get_string_details("search-backend", Some(&ann), None).await.unwrap();
    assert_eq!((s.value.as_str(), s.variant.as_deref()), ("elastic", Some("v2")));
    assert_eq!(client.get_float_value("discount", None, None).await.unwrap(), 0.15);
    assert_eq!(client.get_int_value("max-items", None, None).await.unwrap(), 100);
    let o = client.get_struct_details::<StructValue>("theme", None, None).await.unwrap();
    assert_eq!(o.value.fields.get("bg").and_then(|v| v.as_str()), Some("#000"));

    let e = client.get_bool_details("no-such-flag", None, None).await.unwrap_err();
    assert_eq!(e.code, EvaluationErrorCode::FlagNotFound);
    let d = client.get_bool_details("old-banner", None, Some(&open_feature::EvaluationOptions::default())).await;
    assert!(!d.map(|d| d.value).unwrap_or(false), "a disabled flag gives the caller's default");
    assert!(client.get_bool_details("max-items", None, None).await.is_err(), "type mismatch is an error");

    // The provider reports every reason as STATIC; the wire carries flagd's reasons.
    let url = |p: &str| format!("http://{}{p}", q.ofrep);
    let (status, _, body) =
        post_json(&url("/ofrep/v1/evaluate/flags/search-backend"), r#"{"context":{"email":"ann@example.com"}}"#, &[])
            .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"key": "search-backend", "value": "elastic", "variant": "v2", "reason": "TARGETING_MATCH", "metadata": {"flagSetId": "shop"}})
    );
    let (status, _, body) = post_json(&url("/ofrep/v1/evaluate/flags/old-banner"), "{}", &[]).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"key": "old-banner", "reason": "DISABLED", "metadata": {"flagSetId": "shop"}})),
        "current flagd: 200, reason DISABLED, no value"
    );
    let (status, _, body) = post_json(&url("/ofrep/v1/evaluate/flags/discount"), "{not json", &[]).await;
    assert_eq!(
        (status, &body["errorCode"], &body["key"]),
        (StatusCode::BAD_REQUEST, &json!("PARSE_ERROR"), &json!("discount"))
    );
    let (status, _, body) = post_json(&url("/ofrep/v1/evaluate/flags/discount"), r#"{"context": 7}"#, &[]).await;
    assert_eq!((status, &body["errorCode"]), (StatusCode::BAD_REQUEST, &json!("INVALID_CONTEXT")));
}

#[tokio::test]
async fn ofrep_bulk_evaluation_with_etag_and_304() {
    let up = upstream().await;
    let q = sidecar_with_queries(up.addr, FLAGS, "").await;
    let url = format!("http://{}/ofrep/v1/evaluate/flags", q.ofrep);
    let body = r#"{"context":{"targetingKey":"user-1"}}"#;
    let (status, headers, all) = post_json(&url, body, &[]).await;
    assert_eq!(status, StatusCode::OK);
    let etag = headers.get("etag").unwrap().to_str().unwrap().to_owned();
    let flags = all["flags"].as_array().unwrap();
    assert_eq!(flags.len(), 7, "every flag, the disabled one included: {all}");
    assert!(
        flags
            .iter()
            .any(|f| f == &json!({"key": "old-banner", "reason": "DISABLED", "metadata": {"flagSetId": "shop"}}))
    );
    assert!(flags.iter().any(|f| f == &json!({"key": "max-items", "value": 100, "variant": "big", "reason": "STATIC", "metadata": {"flagSetId": "shop"}})));
    assert_eq!(all["metadata"], json!({"flagSetId": "shop"}));

    let (status, _, empty) = post_json(&url, body, &[("if-none-match", &etag)]).await;
    assert_eq!((status, empty), (StatusCode::NOT_MODIFIED, serde_json::Value::Null));
    // Another context may evaluate differently: then the ETag does not match.
    let (status, _, _) =
        post_json(&url, r#"{"context":{"email":"ann@example.com"}}"#, &[("if-none-match", &etag)]).await;
    assert_eq!(status, StatusCode::OK);
    // So does a change of the flags.
    replace_file(&q.sc.flags_path(), &FLAGS.replace("defaultVariant: big", "defaultVariant: small"));
    let changed = eventually(Duration::from_secs(2), || async {
        post_json(&url, body, &[("if-none-match", &etag)]).await.0 == StatusCode::OK
    })
    .await;
    assert!(changed, "a reload changes the ETag");
}

#[tokio::test]
async fn connect_unary_json_on_the_grpc_port() {
    let up = upstream().await;
    let q = sidecar_with_queries(up.addr, FLAGS, "").await;
    let url = |m: &str| format!("http://{}/flagd.evaluation.v1.Service/{m}", q.grpc);
    let (status, _, body) =
        post_json(&url("ResolveString"), r#"{"flagKey":"search-backend","context":{"email":"ann@example.com"}}"#, &[])
            .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"value": "elastic", "reason": "TARGETING_MATCH", "variant": "v2", "metadata": {"flagSetId": "shop"}})
    );
    let (_, _, body) = post_json(&url("ResolveInt"), r#"{"flagKey":"max-items"}"#, &[]).await;
    assert_eq!(body["value"], "100", "proto3 JSON writes int64 as a string");
    let (_, _, body) = post_json(&url("ResolveAll"), r#"{"context":{"targetingKey":"u"}}"#, &[]).await;
    assert_eq!(body["flags"]["max-items"]["doubleValue"], 100.0);
    let (status, _, body) = post_json(&url("ResolveBoolean"), r#"{"flagKey":"nope"}"#, &[]).await;
    assert_eq!((status, body), (StatusCode::NOT_FOUND, json!({"code": "not_found", "message": "Flag not found"})));
    let (status, _, body) = post_json(&url("ResolveBoolean"), r#"{"flagKey":"max-items"}"#, &[]).await;
    assert_eq!((status, &body["code"]), (StatusCode::BAD_REQUEST, &json!("invalid_argument")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_and_a_proxied_request_get_the_same_variant() {
    let up = upstream().await;
    let q = sidecar_with_queries(up.addr, FLAGS, "").await;
    let provider = FlagdProvider::new(options(ResolverType::Rpc, q.grpc.port())).await.unwrap();
    let client = openfeature_client("same-variant", provider).await;
    let mut seen_variants = std::collections::HashSet::new();
    for i in 0..100 {
        let user = format!("user-{i}");
        let proxied = header(&seen(&q.sc.url("/"), &[("x-user-id", &user)]).await, "x-flag-new-checkout");
        let queried = client.get_bool_details("new-checkout", Some(&ctx(&user)), None).await.unwrap().variant;
        assert_eq!(proxied, queried, "{user}");
        seen_variants.insert(queried);
    }
    assert_eq!(seen_variants.len(), 2, "a 50% ramp splits 100 users");
}

#[tokio::test]
async fn configured_context_and_headers_enrich_ofrep_and_connect_queries() {
    let up = upstream().await;
    let extra = "[queries.context]\ntier = \"gold\"\n[queries.headers]\nx-user-email = \"email\"\n";
    let q = sidecar_with_queries(up.addr, FLAGS, extra).await;
    let ofrep = format!("http://{}/ofrep/v1/evaluate/flags/gold-only", q.ofrep);
    let (_, _, body) = post_json(&ofrep, "{}", &[("x-user-email", "bo@example.com")]).await;
    assert_eq!((&body["variant"], &body["reason"]), (&json!("yes"), &json!("TARGETING_MATCH")));
    let (_, _, body) = post_json(&ofrep, "{}", &[]).await;
    assert_eq!(body["variant"], "no", "without the header the rule does not match");
    // The configured static attribute overrides the caller's, as in flagd.
    let (_, _, body) = post_json(&ofrep, r#"{"context":{"tier":"tin"}}"#, &[("x-user-email", "bo@example.com")]).await;
    assert_eq!(body["variant"], "yes");
    let connect = format!("http://{}/flagd.evaluation.v1.Service/ResolveBoolean", q.grpc);
    let (_, _, body) = post_json(&connect, r#"{"flagKey":"gold-only"}"#, &[("x-user-email", "bo@example.com")]).await;
    assert_eq!(body["value"], true);
}
