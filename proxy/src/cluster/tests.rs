use std::path::Path;

use super::*;

fn cluster(balance: &str, endpoints: usize, eject_for: &str) -> (Cluster, Metrics) {
    let list: Vec<String> = (0..endpoints).map(|i| format!("\"http://127.0.0.1:{}\"", 1000 + i)).collect();
    let text = format!(
        "flags = \"f\"\n[clusters.c]\nendpoints = [{}]\nbalance = \"{balance}\"\neject_after = 2\neject_for = \"{eject_for}\"\n",
        list.join(", ")
    );
    let config = Config::parse(Path::new("proxy.toml"), &text).unwrap();
    let metrics = Metrics::new();
    (Cluster::new(&config.clusters[1], &config, &metrics), metrics)
}

fn fail(c: &Cluster, index: usize) {
    c.connect_failed(Pick { index, probe: false });
}

fn picks(c: &Cluster, n: usize) -> Vec<usize> {
    (0..n).map(|_| c.pick(None).index).collect()
}

#[test]
fn round_robin_takes_turns() {
    let (c, _) = cluster("round_robin", 3, "10s");
    assert_eq!(picks(&c, 6), [0, 1, 2, 0, 1, 2]);
    for _ in 0..3 {
        for excluded in 0..3 {
            assert_ne!(c.pick(Some(excluded)).index, excluded);
        }
    }
}

#[test]
fn least_requests_prefers_fewer_in_flight() {
    let (c, _) = cluster("least_requests", 2, "10s");
    let busy = Lease::new(c.endpoints[0].pool());
    assert!(picks(&c, 50).iter().all(|&i| i == 1));
    drop(busy);
    let spread = picks(&c, 200);
    assert!(spread.contains(&0) && spread.contains(&1), "ties are broken at random");
}

#[test]
fn consecutive_failures_eject_and_a_connection_resets_the_count() {
    let (c, metrics) = cluster("round_robin", 3, "10s");
    fail(&c, 0);
    c.connected(Pick { index: 0, probe: false });
    fail(&c, 0);
    assert_eq!(c.endpoints[0].ejected_until.load(Ordering::Relaxed), 0, "not consecutive");
    fail(&c, 0);
    assert_ne!(c.endpoints[0].ejected_until.load(Ordering::Relaxed), 0);
    assert!(picks(&c, 10).iter().all(|&i| i != 0));
    let text = metrics.render();
    assert!(text.contains("rampart_upstream_ejections_total{cluster=\"c\",endpoint=\"127.0.0.1:1000\"} 1"), "{text}");
    assert!(text.contains("rampart_upstream_endpoint_healthy{cluster=\"c\",endpoint=\"127.0.0.1:1000\"} 0"), "{text}");
}

#[test]
fn the_last_endpoint_in_rotation_stays() {
    let (c, _) = cluster("round_robin", 2, "10s");
    for _ in 0..2 {
        fail(&c, 0);
        fail(&c, 1);
    }
    let ejected: Vec<bool> = c.endpoints.iter().map(|e| e.ejected_until.load(Ordering::Relaxed) != 0).collect();
    assert_eq!(ejected, [true, false]);
    assert_eq!(c.in_rotation.load(Ordering::Relaxed), 1);
    assert!(picks(&c, 4).iter().all(|&i| i == 1));
    // Everything excluded or ejected: panic mode still answers with an endpoint.
    assert_eq!(c.pick(Some(1)).index, 0);
}

#[test]
fn a_probe_readmits_or_doubles_the_ejection() {
    let (c, _) = cluster("round_robin", 2, "20ms");
    fail(&c, 0);
    fail(&c, 0);
    let first = c.endpoints[0].ejected_until.load(Ordering::Relaxed) - c.now();
    assert!(first <= nanos(Duration::from_millis(20)));
    assert!(c.pick(None).index == 1 && !c.pick(None).probe, "no probe before the time is over");
    std::thread::sleep(Duration::from_millis(25));
    let probe = c.pick(None);
    assert!(probe.probe && probe.index == 0);
    assert!(!c.pick(None).probe, "one probe at a time");
    c.connect_failed(probe);
    let again = c.endpoints[0].ejected_until.load(Ordering::Relaxed) - c.now();
    assert!(again > nanos(Duration::from_millis(25)), "doubled: {again}");
    std::thread::sleep(Duration::from_millis(45));
    let probe = c.pick(None);
    assert!(probe.probe && probe.index == 0);
    c.connected(probe);
    assert_eq!(c.in_rotation.load(Ordering::Relaxed), 2);
    assert_eq!(picks(&c, 4).iter().filter(|&&i| i == 0).count(), 2, "back in rotation");
}

#[test]
fn a_cancelled_probe_frees_the_next_one() {
    let (c, _) = cluster("round_robin", 2, "1ms");
    fail(&c, 0);
    fail(&c, 0);
    std::thread::sleep(Duration::from_millis(5));
    let probe = c.pick(None);
    assert!(probe.probe);
    drop(ProbeGuard(Some(&c.endpoints[0].probing)));
    assert!(c.pick(None).probe, "the cancelled probe's endpoint can be probed again");
}
