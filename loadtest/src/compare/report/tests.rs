//! The report's arithmetic: medians, ratios against direct and nginx, the markdown rows.

use super::*;

#[test]
fn medians() {
    assert_eq!(median(vec![]), 0.0);
    assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
    assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
}

fn run(target: TargetKind, phase: Phase, rps: f64, p99: u64, cpu: Option<f64>) -> Run {
    let summary = Summary { requests: 1000, rps, p99_us: p99, ..Summary::default() };
    Run { round: 1, target, phase, summary, proxy_cpu_s: cpu, upstream_cpu_s: 0.01, loadgen_busy: 0.5 }
}

#[test]
fn rows_compare_against_direct_and_nginx() {
    let runs = vec![
        run(TargetKind::Direct, Phase::Closed, 40_000.0, 100, None),
        run(TargetKind::Rampart, Phase::Closed, 20_000.0, 300, Some(0.02)),
        run(TargetKind::Nginx, Phase::Closed, 25_000.0, 200, Some(0.025)),
        run(TargetKind::Direct, Phase::Open(5000.0), 5000.0, 100, None),
        run(TargetKind::Rampart, Phase::Open(5000.0), 5000.0, 160, Some(0.02)),
        run(TargetKind::Nginx, Phase::Open(5000.0), 5000.0, 180, Some(0.02)),
    ];
    let machine = Machine {
        date: "2026-11-26".to_owned(),
        started: String::new(),
        nproc: 2,
        cpu_model: "x".to_owned(),
        kernel: String::new(),
        loadavg_before: String::new(),
        loadavg_after: String::new(),
        pinned: true,
        loadgen_cpu: "0".to_owned(),
        server_cpu: "1".to_owned(),
        workers: 1,
        upstream: UpstreamKind::Nginx,
        versions: BTreeMap::new(),
        rampart_rev: String::new(),
        command: String::new(),
        rounds: 1,
        duration_s: 1.0,
        warmup_s: 0.0,
        connections: 32,
        open_connections: 32,
        tls: None,
    };
    let r = Report::new(machine, runs, vec![(TargetKind::Rampart, 10 << 20)], 1 << 20, vec![TargetKind::Haproxy]);
    let rampart = r.rows.iter().find(|x| x.target == TargetKind::Rampart && x.phase == Phase::Closed).unwrap();
    assert_eq!(rampart.rps_vs_direct, Some(0.5));
    assert_eq!(rampart.rps_vs_nginx, Some(0.8));
    assert!((rampart.proxy_cpu_us_per_req.unwrap() - 20.0).abs() < 1e-9);
    let open = r.rows.iter().find(|x| x.target == TargetKind::Rampart && x.phase == Phase::Open(5000.0)).unwrap();
    assert_eq!(open.p99_added_us, Some(60.0));
    assert_eq!(open.p99_added_vs_nginx, Some(0.75));
    let md = r.markdown();
    assert!(md.contains("| rampart | 20000 | 0.50 | 0.80 | 20.0 |"), "{md}");
    assert!(md.contains("| rampart | 5000 |") && md.contains("haproxy: skipped"), "{md}");
}

#[test]
fn a_tls_report_is_marked_and_records_the_handshakes() {
    let tls_run = |target, phase, rps, handshakes| {
        let mut r = run(target, phase, rps, 200, Some(0.02));
        r.summary.tls = Some("TLSv1_3 TLS13_AES_256_GCM_SHA384 http/1.1".to_owned());
        r.summary.tls_handshakes = handshakes;
        r
    };
    let runs = vec![
        run(TargetKind::Direct, Phase::Closed, 40_000.0, 100, None),
        tls_run(TargetKind::Rampart, Phase::Closed, 20_000.0, 32),
        tls_run(TargetKind::Nginx, Phase::Closed, 25_000.0, 32),
        tls_run(TargetKind::Rampart, Phase::Open(5000.0), 5000.0, 33),
    ];
    let mut machine = Machine {
        date: "2026-11-26".to_owned(),
        started: String::new(),
        nproc: 2,
        cpu_model: "x".to_owned(),
        kernel: String::new(),
        loadavg_before: String::new(),
        loadavg_after: String::new(),
        pinned: true,
        loadgen_cpu: "0".to_owned(),
        server_cpu: "1".to_owned(),
        workers: 1,
        upstream: UpstreamKind::Nginx,
        versions: BTreeMap::new(),
        rampart_rev: String::new(),
        command: String::new(),
        rounds: 1,
        duration_s: 1.0,
        warmup_s: 0.0,
        connections: 32,
        open_connections: 32,
        tls: None,
    };
    machine.tls = Some(TlsSetup {
        certificate: "self-signed".to_owned(),
        listeners: vec!["nginx: `listen … ssl`".to_owned()],
        negotiated: BTreeMap::new(),
        handshakes_per_run: BTreeMap::new(),
    });
    let r = Report::new(machine, runs, vec![], 1 << 20, vec![]);
    let tls = r.machine.tls.as_ref().unwrap();
    assert_eq!(tls.negotiated.len(), 2);
    assert_eq!(tls.handshakes_per_run.get("rampart"), Some(&32.5));
    let md = r.markdown();
    assert!(md.starts_with("# Rampart vs direct, nginx and HAProxy — TLS on the listener — 2026-11-26"), "{md}");
    assert!(md.contains("## Throughput (closed loop, 32 connections) — TLS on the listener"), "{md}");
    assert!(md.contains("| direct (plaintext) | 40000 |") && md.contains("| rampart | 20000 | 0.50 | 0.80 |"), "{md}");
    assert!(md.contains("rampart: TLSv1_3 TLS13_AES_256_GCM_SHA384 http/1.1"), "{md}");
}
