//! flagd's APIs on a sidecar running in-process on loopback: `ResolveBoolean` over
//! `flagd.evaluation.v2` (one client, calls in sequence, and 64 in flight), and `SyncFlags`
//! fan-out — 1 000 in-process clients' streams (20 HTTP/2 connections × 50: the query port takes
//! 64 streams per connection), one flag change written to the flags file, time until every
//! stream has the new flags (the file watcher's 50 ms debounce included).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use rampart_proto::flagd::evaluation::v2::ResolveBooleanRequest;
use rampart_proto::flagd::evaluation::v2::service_client::ServiceClient;
use rampart_proto::flagd::sync::v1::SyncFlagsRequest;
use rampart_proto::flagd::sync::v1::flag_sync_service_client::FlagSyncServiceClient;
use rampart_proxy::{Config, Proxy, QueryListeners};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const CLIENTS: usize = 1000;
const CONNECTIONS: usize = 20;

fn flags(percent: u32) -> String {
    format!(
        "flags:\n  new-checkout:\n    state: ENABLED\n    variants: {{ \"on\": true, \"off\": false }}\n    \
         defaultVariant: \"off\"\n    ramp: {{ treatment: \"on\", percent: {percent} }}\n  \
         banner:\n    state: ENABLED\n    variants: {{ a: \"A\", b: \"B\" }}\n    defaultVariant: a\n"
    )
}

struct Running {
    dir: tempfile::TempDir,
    grpc: std::net::SocketAddr,
    stop: CancellationToken,
}

async fn sidecar() -> Running {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("flags.yaml"), flags(5)).unwrap();
    let config = dir.path().join("proxy.toml");
    std::fs::write(&config, "upstream = \"http://127.0.0.1:9\"\nflags = \"flags.yaml\"\n").unwrap();
    let proxy = Proxy::new(Config::load(&config).unwrap()).unwrap();
    let (listener, admin) =
        (TcpListener::bind("127.0.0.1:0").await.unwrap(), TcpListener::bind("127.0.0.1:0").await.unwrap());
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = grpc.local_addr().unwrap();
    let queries = QueryListeners { grpc: Some(grpc), ofrep: None, unix: None };
    let stop = CancellationToken::new();
    tokio::spawn(proxy.run_with_queries(listener, admin, queries, stop.clone()));
    Running { dir, grpc: addr, stop }
}

async fn channel(addr: std::net::SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap()
}

fn resolve_boolean(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let running = rt.block_on(sidecar());
    let client = rt.block_on(async { ServiceClient::new(channel(running.grpc).await) });
    let req = || {
        let ctx = prost_types_struct("user-42");
        ResolveBooleanRequest { flag_key: "new-checkout".to_owned(), context: Some(ctx) }
    };
    let mut group = c.benchmark_group("flagd_v2");
    group.bench_function("resolve_boolean_sequential", |b| {
        b.to_async(&rt).iter(|| {
            let mut client = client.clone();
            async move { client.resolve_boolean(req()).await.unwrap() }
        })
    });
    group.bench_function("resolve_boolean_64_in_flight_per_call", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let client = client.clone();
            async move {
                let started = Instant::now();
                let per_task = iters.div_ceil(64);
                let tasks: Vec<_> = (0..64)
                    .map(|_| {
                        let mut client = client.clone();
                        tokio::spawn(async move {
                            for _ in 0..per_task {
                                client.resolve_boolean(req()).await.unwrap();
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
                started.elapsed().div_f64((per_task * 64) as f64 / iters as f64)
            }
        })
    });
    group.finish();
    running.stop.cancel();
}

fn prost_types_struct(targeting_key: &str) -> prost_types::Struct {
    let kind = prost_types::value::Kind::StringValue(targeting_key.to_owned());
    let fields = [("targetingKey".to_owned(), prost_types::Value { kind: Some(kind) })].into_iter().collect();
    prost_types::Struct { fields }
}

fn sync_fanout(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let running = rt.block_on(sidecar());
    let received = Arc::new(AtomicUsize::new(0));
    let notify = Arc::new(Notify::new());
    rt.block_on(async {
        let mut ready = Vec::new();
        for _ in 0..CONNECTIONS {
            let ch = channel(running.grpc).await;
            for _ in 0..CLIENTS / CONNECTIONS {
                let mut client = FlagSyncServiceClient::new(ch.clone());
                let (received, notify) = (received.clone(), notify.clone());
                let (tx, rx) = tokio::sync::oneshot::channel();
                tokio::spawn(async move {
                    let req = SyncFlagsRequest { provider_id: String::new(), selector: String::new() };
                    let mut stream = client.sync_flags(req).await.unwrap().into_inner();
                    stream.message().await.unwrap();
                    let _ = tx.send(());
                    while let Ok(Some(_)) = stream.message().await {
                        received.fetch_add(1, Ordering::Relaxed);
                        notify.notify_one();
                    }
                });
                ready.push(rx);
            }
        }
        for r in ready {
            r.await.unwrap();
        }
    });
    let mut group = c.benchmark_group("flagd_sync");
    group.sample_size(10).measurement_time(Duration::from_secs(20));
    let mut percent = 5;
    group.bench_function("fanout_1000_clients_one_change", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                percent = if percent == 5 { 6 } else { 5 };
                let target = received.load(Ordering::Relaxed) + CLIENTS;
                let path = running.dir.path().join("flags.yaml");
                let tmp = running.dir.path().join("flags.tmp");
                std::fs::write(&tmp, flags(percent)).unwrap();
                let started = Instant::now();
                std::fs::rename(&tmp, &path).unwrap();
                rt.block_on(async {
                    while received.load(Ordering::Relaxed) < target {
                        notify.notified().await;
                    }
                });
                total += started.elapsed();
            }
            total
        })
    });
    group.finish();
    running.stop.cancel();
}

criterion_group!(benches, resolve_boolean, sync_fanout);
criterion_main!(benches);
