//! End-to-end routing: real upstreams on 127.0.0.1:0 (each naming itself in `x-upstream`), the
//! sidecar in front on real sockets — variant, header and path routes, round robin and least
//! requests, ejection and recovery, retries, per-route timeouts.

mod support;

use std::time::Duration;

use http::{Request, StatusCode};
use support::*;

const FLAGS: &str = r#"
flags:
  new-checkout:
    state: ENABLED
    variants: { "on": true, "off": false }
    defaultVariant: "off"
    targeting:
      if: [{ starts_with: [{ var: targetingKey }, "beta-"] }, "on", null]
"#;

fn list(upstreams: &[&str]) -> String {
    upstreams.iter().map(|u| format!("\"http://{u}\"")).collect::<Vec<_>>().join(", ")
}

/// Sends `n` GETs of `path`; returns the answering upstream of each (all must be 200).
async fn spread(sc: &Sidecar, path: &str, n: usize) -> Vec<String> {
    let mut from = Vec::new();
    for _ in 0..n {
        let (status, upstream) = get_from(&sc.url(path), &[]).await;
        assert_eq!(status, StatusCode::OK);
        from.push(upstream.unwrap());
    }
    from
}

fn count(from: &[String], addr: std::net::SocketAddr) -> usize {
    from.iter().filter(|f| **f == addr.to_string()).count()
}

#[tokio::test]
async fn the_treatment_variant_goes_to_the_canary() {
    let (stable, canary) = (named_upstream().await, named_upstream().await);
    let extra = format!(
        "[clusters.canary]\nendpoints = [{}]\n[[routes]]\nflag = {{ new-checkout = \"on\" }}\ncluster = \"canary\"\n",
        list(&[&canary.addr.to_string()])
    );
    let sc = sidecar(stable.addr, FLAGS, &extra).await;
    for user in ["beta-1", "beta-2"] {
        let (status, from) = get_from(&sc.url("/checkout"), &[("x-user-id", user)]).await;
        assert_eq!((status, from), (StatusCode::OK, Some(canary.addr.to_string())), "{user}");
    }
    for user in ["u-1", "u-2"] {
        let (status, from) = get_from(&sc.url("/checkout"), &[("x-user-id", user)]).await;
        assert_eq!((status, from), (StatusCode::OK, Some(stable.addr.to_string())), "{user}");
    }
    // The canary still gets the variant header, like any upstream.
    let h = seen(&sc.url("/"), &[("x-user-id", "beta-3")]).await;
    assert_eq!(header(&h, "x-flag-new-checkout").as_deref(), Some("on"));
    let sample = format!("rampart_upstream_requests_total{{cluster=\"canary\",endpoint=\"{}\"}}", canary.addr);
    assert_eq!(metric(sc.admin, &sample).await, Some(3.0));
}

#[tokio::test]
async fn header_and_path_prefix_routes() {
    let (stable, debug, api) = (named_upstream().await, named_upstream().await, named_upstream().await);
    let extra = format!(
        "[clusters.debug]\nendpoints = [{}]\n[clusters.api]\nendpoints = [{}]\n\
         [[routes]]\nheaders = {{ x-debug = \"1\" }}\ncluster = \"debug\"\n\
         [[routes]]\npath_prefix = \"/api/\"\ncluster = \"api\"\n",
        list(&[&debug.addr.to_string()]),
        list(&[&api.addr.to_string()])
    );
    let sc = sidecar(stable.addr, FLAGS, &extra).await;
    let name = |u: &Upstream| Some(u.addr.to_string());
    assert_eq!(get_from(&sc.url("/api/cart"), &[("x-debug", "1")]).await.1, name(&debug), "first match wins");
    assert_eq!(get_from(&sc.url("/api/cart"), &[("x-debug", "0")]).await.1, name(&api));
    assert_eq!(get_from(&sc.url("/api"), &[]).await.1, name(&stable));
    assert_eq!(get_from(&sc.url("/web"), &[]).await.1, name(&stable));
}

#[tokio::test]
async fn round_robin_spreads_over_the_endpoints() {
    let (a, b) = (named_upstream().await, named_upstream().await);
    let extra = format!(
        "[clusters.web]\nendpoints = [{}]\n[[routes]]\ncluster = \"web\"\n",
        list(&[&a.addr.to_string(), &b.addr.to_string()])
    );
    let sc = sidecar(dead_addr().await, FLAGS, &extra).await;
    let from = spread(&sc, "/", 10).await;
    assert_eq!((count(&from, a.addr), count(&from, b.addr)), (5, 5), "{from:?}");
    assert!(from.windows(2).all(|w| w[0] != w[1]), "turns alternate: {from:?}");
}

#[tokio::test]
async fn least_requests_prefers_the_idle_endpoint() {
    let (mut a, mut b) = (named_upstream().await, named_upstream().await);
    let extra = format!(
        "[clusters.web]\nendpoints = [{}]\nbalance = \"least_requests\"\n[[routes]]\ncluster = \"web\"\n",
        list(&[&a.addr.to_string(), &b.addr.to_string()])
    );
    let sc = sidecar(dead_addr().await, FLAGS, &extra).await;
    let url = sc.url("/slow?ms=3000");
    let slow = tokio::spawn(async move { get_from(&url, &[]).await });
    // The slow request has arrived at one of them: that one is busy.
    let idle = tokio::select! {
        _ = a.arrivals.recv() => b.addr,
        _ = b.arrivals.recv() => a.addr,
    };
    let from = spread(&sc, "/", 8).await;
    assert_eq!(count(&from, idle), 8, "every request goes to the endpoint with nothing in flight: {from:?}");
    slow.abort();
}

#[tokio::test]
async fn a_failing_endpoint_is_ejected_and_probed_back_in() {
    let live = named_upstream().await;
    let dead = dead_addr().await;
    let extra = format!(
        "[clusters.web]\nendpoints = [{}]\neject_after = 2\neject_for = \"1s\"\n[[routes]]\ncluster = \"web\"\n",
        list(&[&live.addr.to_string(), &dead.to_string()])
    );
    let sc = sidecar(dead_addr().await, FLAGS, &extra).await;
    // Round robin: live, dead (502), live, dead (502: the second failure in a row ejects it).
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(get_from(&sc.url("/"), &[]).await.0);
    }
    assert_eq!(statuses, [StatusCode::OK, StatusCode::BAD_GATEWAY, StatusCode::OK, StatusCode::BAD_GATEWAY]);
    let labels = format!("{{cluster=\"web\",endpoint=\"{dead}\"}}");
    assert_eq!(metric(sc.admin, &format!("rampart_upstream_ejections_total{labels}")).await, Some(1.0));
    assert_eq!(metric(sc.admin, &format!("rampart_upstream_endpoint_healthy{labels}")).await, Some(0.0));
    let from = spread(&sc, "/", 6).await;
    assert_eq!(count(&from, live.addr), 6, "the ejected endpoint gets nothing");

    // It comes back on the same port; once the ejection is over, a probe lets it back in.
    let revived = upstream_at(dead).await;
    let back = eventually(Duration::from_secs(5), || async {
        get_from(&sc.url("/"), &[]).await.1 == Some(revived.addr.to_string())
    })
    .await;
    assert!(back, "the revived endpoint must get traffic again");
    assert_eq!(metric(sc.admin, &format!("rampart_upstream_endpoint_healthy{labels}")).await, Some(1.0));
    let from = spread(&sc, "/", 6).await;
    assert_eq!((count(&from, live.addr), count(&from, revived.addr)), (3, 3), "{from:?}");
}

#[tokio::test]
async fn a_get_is_retried_on_another_endpoint_but_a_post_with_a_body_is_not() {
    let live = named_upstream().await;
    let dead = dead_addr().await;
    let extra = format!(
        "[clusters.web]\nendpoints = [{}]\neject_after = 100\n[[routes]]\ncluster = \"web\"\nretries = 1\n",
        list(&[&dead.to_string(), &live.addr.to_string()])
    );
    let sc = sidecar(dead_addr().await, FLAGS, &extra).await;
    // Round robin starts at the dead endpoint: the POST's one attempt fails.
    let post = Request::post(sc.url("/orders")).body(body("{\"qty\": 1}")).unwrap();
    let (status, _, text) = send(post).await;
    assert_eq!((status, text.as_str()), (StatusCode::BAD_GATEWAY, "upstream unreachable\n"));
    // Every GET succeeds: those that pick the dead endpoint are retried on the live one.
    let from = spread(&sc, "/", 6).await;
    assert_eq!(count(&from, live.addr), 6);
    let dead_attempts = format!("rampart_upstream_requests_total{{cluster=\"web\",endpoint=\"{dead}\"}}");
    let tried = metric(sc.admin, &dead_attempts).await.unwrap();
    assert!(tried >= 3.0, "the POST and the GETs that picked it first tried it: {tried}");
}

#[tokio::test]
async fn a_route_timeout_answers_504() {
    let up = named_upstream().await;
    let extra = "upstream_timeout = \"10s\"\n[[routes]]\nheaders = { x-impatient = \"1\" }\ntimeout = \"200ms\"\n";
    let sc = sidecar(up.addr, FLAGS, extra).await;
    let (status, body) = get(&sc.url("/slow?ms=2000"), &[("x-impatient", "1")]).await;
    assert_eq!((status, body.as_str()), (StatusCode::GATEWAY_TIMEOUT, "upstream timed out\n"));
    let (status, _) = get(&sc.url("/slow?ms=400"), &[]).await;
    assert_eq!(status, StatusCode::OK, "other requests keep the global timeout");
}

#[tokio::test]
async fn keep_alive_connections_are_reused() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                        bytes::Bytes::from_static(b"ok"),
                    )))
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
            });
        }
    });
    let sc = sidecar(addr, FLAGS, "").await;
    for _ in 0..10 {
        assert_eq!(get(&sc.url("/"), &[]).await.0, StatusCode::OK);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "sequential requests share one upstream connection");
}
