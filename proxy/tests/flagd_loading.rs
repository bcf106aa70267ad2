//! A flag file loads in the sidecar as flagd loads it: a flag whose rule cannot compile is kept
//! out of service — it answers flagd's `PARSE_ERROR` on every query surface, gets no header on
//! the request path, and is counted — while every other flag serves.

mod support;

use http::StatusCode;
use open_feature_flagd::flagd::evaluation::v1 as flagd;
use open_feature_flagd::flagd::evaluation::v1::service_client::ServiceClient;
use serde_json::json;
use support::*;

const FLAGS: &str = r#"
flags:
  good:
    state: ENABLED
    variants: { "on": true, "off": false }
    defaultVariant: "on"
  bad:
    state: ENABLED
    variants: { "on": true, "off": false }
    defaultVariant: "off"
    targeting: { "if": [{ "$ref": "nowhere" }, "on", "off"] }
  odd:
    state: ENABLED
    variants: { "on": true, "off": false }
    defaultVariant: "off"
    targeting: { "no_such_operator": [1] }
"#;

#[tokio::test]
async fn broken_rules_answer_parse_error_and_the_rest_serve() {
    let up = upstream().await;
    let q = sidecar_with_queries(up.addr, FLAGS, "").await;
    assert_eq!(metric(q.sc.admin, "rampart_flags_out_of_service").await, Some(2.0));

    let ofrep = |k: &str| format!("http://{}/ofrep/v1/evaluate/flags/{k}", q.ofrep);
    let (status, _, body) = post_json(&ofrep("bad"), "{}", &[]).await;
    assert_eq!((status, &body["errorCode"]), (StatusCode::BAD_REQUEST, &json!("PARSE_ERROR")));
    let (status, _, body) = post_json(&ofrep("good"), "{}", &[]).await;
    assert_eq!((status, &body["value"]), (StatusCode::OK, &json!(true)));

    let mut c = ServiceClient::connect(format!("http://{}", q.grpc)).await.unwrap();
    let req = |k: &str| flagd::ResolveBooleanRequest { flag_key: k.to_owned(), context: None };
    assert_eq!(c.resolve_boolean(req("odd")).await.unwrap_err().code(), tonic::Code::DataLoss, "flagd: PARSE_ERROR");
    assert!(c.resolve_boolean(req("good")).await.unwrap().into_inner().value);

    let connect = format!("http://{}/flagd.evaluation.v1.Service/ResolveBoolean", q.grpc);
    let (status, _, body) = post_json(&connect, r#"{"flagKey":"bad"}"#, &[]).await;
    assert_eq!((status, &body["code"]), (StatusCode::INTERNAL_SERVER_ERROR, &json!("data_loss")));

    let h = seen(&q.sc.url("/"), &[]).await;
    assert_eq!(header(&h, "x-flag-good").as_deref(), Some("on"));
    assert_eq!(header(&h, "x-flag-bad"), None, "a flag out of service sends no header");
}
