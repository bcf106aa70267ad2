//! Throughput of the flagd `ResolveBoolean` query: a bounded load run, not a test.
//!
//! ```sh
//! cargo build --release -p rampart-proxy --example query_load
//! taskset -c 1 target/release/examples/query_load serve 127.0.0.1:18013 &     # the sidecar, one thread
//! taskset -c 0 target/release/examples/query_load load 127.0.0.1:18013 10 64 4 # 10 s, 64 in flight, 4 connections
//! ```
//!
//! `serve` runs a sidecar (one runtime thread, as deployed) with a 50% ramped flag and answers
//! queries on the given address until killed; `load` sends `ResolveBoolean` with a different
//! targeting key per call for the given seconds and prints requests/s and latency percentiles.

use std::time::{Duration, Instant};

use rampart_proto::flagd::evaluation::v1::ResolveBooleanRequest;
use rampart_proto::flagd::evaluation::v1::service_client::ServiceClient;
use rampart_proxy::{Config, Proxy, QueryListeners};
use tokio_util::sync::CancellationToken;

const FLAGS: &str = "flags:\n  new-checkout:\n    state: ENABLED\n    variants: { \"on\": true, \"off\": false }\n    \
                     defaultVariant: \"off\"\n    ramp: { treatment: \"on\", percent: 50 }\n";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match args.first().map(String::as_str) {
        Some("serve") => rt.block_on(serve(args.get(1).map_or("127.0.0.1:18013", String::as_str))),
        Some("load") => {
            let num = |i: usize, d: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(d);
            let addr = args.get(1).map_or("127.0.0.1:18013", String::as_str).to_owned();
            rt.block_on(load(addr, Duration::from_secs(num(2, 10).min(120)), num(3, 64) as usize, num(4, 4) as usize))
        }
        _ => Err("usage: query_load serve ADDR | query_load load ADDR SECONDS IN_FLIGHT CONNECTIONS".into()),
    }
}

async fn serve(addr: &str) -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("rampart-query-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("flags.yaml"), FLAGS)?;
    let text = format!("flags = \"flags.yaml\"\n[queries]\ngrpc = \"{addr}\"\nofrep = \"off\"\n");
    let config = Config::parse(&dir.join("proxy.toml"), &text)?;
    let proxy = Proxy::new(config)?;
    let queries = QueryListeners::bind(&proxy.config().queries).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("serving flagd gRPC on {addr}");
    proxy.run_with_queries(listener, admin, queries, CancellationToken::new()).await;
    Ok(())
}

async fn load(
    addr: String,
    duration: Duration,
    in_flight: usize,
    connections: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut clients = Vec::new();
    for _ in 0..connections.max(1) {
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.tcp_nodelay(true).connect().await?;
        clients.push(ServiceClient::new(channel));
    }
    // Warm up, then measure.
    let deadline = Instant::now() + Duration::from_secs(1);
    run(&clients, in_flight, deadline, 0).await;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..in_flight {
        let mut client = clients[i % clients.len()].clone();
        let until = start + duration;
        tasks.spawn(async move {
            let mut lat = Vec::with_capacity(1 << 16);
            let mut n = i as u64;
            while Instant::now() < until {
                n += 1_000_003;
                let req = request(n);
                let t = Instant::now();
                let ok = client.resolve_boolean(req).await.is_ok();
                lat.push(if ok { t.elapsed().as_micros() as u32 } else { u32::MAX });
            }
            lat
        });
    }
    let mut all = Vec::new();
    while let Some(lat) = tasks.join_next().await {
        all.extend(lat?);
    }
    let secs = start.elapsed().as_secs_f64();
    let errors = all.iter().filter(|&&l| l == u32::MAX).count();
    all.retain(|&l| l != u32::MAX);
    all.sort_unstable();
    let pct =
        |p: f64| all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1))).copied().unwrap_or(0);
    println!(
        "ResolveBoolean: {} ok, {errors} errors in {secs:.1} s = {:.0}/s; latency p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs ({in_flight} in flight over {connections} connections)",
        all.len(),
        all.len() as f64 / secs,
        pct(0.50),
        pct(0.99),
        pct(0.999),
        all.last().copied().unwrap_or(0)
    );
    Ok(())
}

fn request(n: u64) -> ResolveBooleanRequest {
    let key = prost_types::Value { kind: Some(prost_types::value::Kind::StringValue(format!("user-{n}"))) };
    let context = prost_types::Struct { fields: [("targetingKey".to_owned(), key)].into_iter().collect() };
    ResolveBooleanRequest { flag_key: "new-checkout".to_owned(), context: Some(context) }
}

async fn run(clients: &[ServiceClient<tonic::transport::Channel>], in_flight: usize, until: Instant, seed: u64) {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..in_flight {
        let mut client = clients[i % clients.len()].clone();
        tasks.spawn(async move {
            let mut n = seed + i as u64;
            while Instant::now() < until {
                n += 7;
                let _ = client.resolve_boolean(request(n)).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}
