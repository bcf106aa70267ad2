//! `load`: HTTP load against loopback targets. Open loop (`--rate`: requests start at their
//! scheduled times whatever the target does, latency measured from that intended start) or
//! closed loop (`--closed`: each worker sends its next request when the previous one is done,
//! for the saturation throughput). HTTP/1.1 or h2c; `https://` targets over TLS (ALPN `http/1.1`
//! or `h2`, one handshake per connection); headers with per-request placeholders.

mod conn;
mod engine;
mod schedule;
mod stats;
mod template;
#[cfg(test)]
mod tests;
mod tls;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hyper::Uri;
use hyper::header::HeaderValue;
use tokio_util::sync::CancellationToken;

use crate::loopback;

pub(crate) use self::conn::{Conn, ConnStats, Protocol, Target};
pub(crate) use self::engine::execute;
pub(crate) use self::stats::Summary;
pub(crate) use self::template::HeaderTemplate;
pub(crate) use self::tls::Trust;

/// The longest a single run may last (warm-up included).
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(600);

#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("pace").required(true).args(["rate", "closed"]))]
pub(crate) struct Args {
    /// Target URL(s), loopback only; connections are spread over them round-robin.
    #[arg(long = "url", required = true)]
    urls: Vec<Uri>,
    /// Open loop: requests per second, each started at its scheduled time.
    #[arg(long)]
    rate: Option<f64>,
    /// Closed loop: every worker sends back to back (saturation).
    #[arg(long)]
    closed: bool,
    /// `h2c` (alias `h2`): h2c with prior knowledge for `http://`, h2 by ALPN for `https://`.
    #[arg(long, value_enum, default_value = "http1")]
    protocol: Protocol,
    /// Shorthand for `--protocol h2c` (h2 by ALPN on an `https://` target).
    #[arg(long, conflicts_with = "protocol")]
    http2: bool,
    /// `https://` targets: trust the server certificates issued by the certificates in this PEM
    /// file (a self-signed certificate is its own CA).
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// `https://` targets: accept any server certificate (targets are loopback-only, e.g. one with
    /// a freshly generated self-signed certificate). Handshake signatures are still checked.
    #[arg(long, conflicts_with = "ca")]
    insecure: bool,
    /// TCP connections (one request at a time each for HTTP/1.1).
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Concurrent streams per h2c connection.
    #[arg(long, default_value_t = 8)]
    streams: usize,
    /// Measured phase.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Unmeasured phase before it, same load.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// At most this many measured requests.
    #[arg(long)]
    requests: Option<u64>,
    /// A request without a complete response by then is a timeout (open loop: counted from its
    /// intended start).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// A header for every request, `'name: value'`; `{random}` in the value is a fresh random id
    /// per request, `{seq}` the request number. Repeatable.
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// Shorthand for `--header 'x-user-id: u-{random}'` (a new user per request).
    #[arg(long)]
    random_user_id: bool,
    /// Print the summary as one JSON line too.
    #[arg(long)]
    json: bool,
}

/// How requests are paced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Pace {
    Open { rate: f64 },
    Closed,
}

/// A load run, validated.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) targets: Vec<Target>,
    pub(crate) protocol: Protocol,
    pub(crate) pace: Pace,
    pub(crate) connections: usize,
    pub(crate) streams: usize,
    pub(crate) duration: Duration,
    pub(crate) warmup: Duration,
    pub(crate) max_requests: Option<u64>,
    pub(crate) timeout: Duration,
    pub(crate) headers: Vec<HeaderTemplate>,
}

impl Plan {
    /// A plan with the defaults of the CLI against `targets`.
    pub(crate) fn new(targets: Vec<Target>, pace: Pace) -> Plan {
        Plan {
            targets,
            protocol: Protocol::Http1,
            pace,
            connections: 32,
            streams: 8,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            max_requests: None,
            timeout: Duration::from_secs(5),
            headers: Vec::new(),
        }
    }

    pub(crate) fn validate(self) -> anyhow::Result<Plan> {
        anyhow::ensure!(!self.targets.is_empty(), "no target");
        anyhow::ensure!(self.connections > 0 && self.streams > 0, "--connections and --streams must be positive");
        anyhow::ensure!(self.connections <= 10_000 && self.streams <= 1000, "too many connections or streams");
        anyhow::ensure!(!self.duration.is_zero(), "--duration must be positive");
        anyhow::ensure!(self.duration + self.warmup <= MAX_DURATION, "a run is bounded to {MAX_DURATION:?}");
        anyhow::ensure!(!self.timeout.is_zero() && self.timeout <= Duration::from_secs(60), "--timeout: 0 < t ≤ 60s");
        if let Pace::Open { rate } = self.pace {
            anyhow::ensure!(rate.is_finite() && rate > 0.0 && rate <= 1e6, "--rate must be in (0, 1000000]");
        }
        Ok(self)
    }
}

/// Checks that `uri` is loopback, resolves it and shapes the request URI for `protocol`
/// (`http://` only; see [`target_with`] for `https://`).
pub(crate) async fn target(uri: &Uri, protocol: Protocol) -> anyhow::Result<Target> {
    target_with(uri, protocol, None).await
}

/// [`target`] for `http://` or `https://`; an `https://` target needs `trust`.
pub(crate) async fn target_with(uri: &Uri, protocol: Protocol, trust: Option<&Trust>) -> anyhow::Result<Target> {
    loopback::check_schemes(uri, &["http", "https"]).await?;
    let https = uri.scheme_str() == Some("https");
    let authority = uri.authority().context("the URL has no host")?;
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    let tls = match (https, trust) {
        (false, _) => None,
        (true, Some(trust)) => Some(Arc::new(tls::TlsClient::new(host, trust, protocol)?)),
        (true, None) => anyhow::bail!("{uri}: an https:// target needs --ca FILE or --insecure"),
    };
    let addr = tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("resolve {uri}"))?
        .next()
        .with_context(|| format!("{uri} resolves to nothing"))?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let shaped: Uri = match protocol {
        Protocol::Http1 => path.parse()?,
        Protocol::H2c => format!("{}://{authority}{path}", if https { "https" } else { "http" }).parse()?,
    };
    let host = HeaderValue::from_str(authority.as_str())?;
    Ok(Target { addr, uri: shaped, host, tls })
}

/// One `GET` on a fresh HTTP/1.1 connection (TLS for `https://`): the status and the body as
/// text. For checks before a run, not for measuring.
pub(crate) async fn fetch(target: &Target, headers: &[(&str, &str)]) -> anyhow::Result<(u16, String)> {
    let mut conn = Conn::open(target, Protocol::Http1, &ConnStats::default()).await?;
    let mut req = hyper::Request::new(http_body_util::Empty::new());
    *req.uri_mut() = target.uri.clone();
    req.headers_mut().insert(hyper::header::HOST, target.host.clone());
    for (k, v) in headers {
        req.headers_mut().insert(hyper::header::HeaderName::from_bytes(k.as_bytes())?, HeaderValue::from_str(v)?);
    }
    let fetch = conn.fetch(req);
    Ok(tokio::time::timeout(Duration::from_secs(5), fetch).await.context("timed out")??)
}

pub(crate) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut headers = args.headers.iter().map(|h| HeaderTemplate::parse(h)).collect::<Result<Vec<_>, _>>()?;
    if args.random_user_id {
        headers.push(HeaderTemplate::parse("x-user-id: u-{random}")?);
    }
    let protocol = if args.http2 { Protocol::H2c } else { args.protocol };
    let trust = match (&args.ca, args.insecure) {
        (Some(ca), _) => Some(Trust::Ca(ca.clone())),
        (None, true) => Some(Trust::Insecure),
        (None, false) => None,
    };
    let mut targets = Vec::new();
    for uri in &args.urls {
        targets.push(target_with(uri, protocol, trust.as_ref()).await?);
    }
    let pace = match args.rate {
        Some(rate) => Pace::Open { rate },
        None => Pace::Closed,
    };
    let plan = Plan {
        protocol,
        connections: args.connections,
        streams: if protocol == Protocol::H2c { args.streams } else { 1 },
        duration: args.duration,
        warmup: args.warmup,
        max_requests: args.requests,
        timeout: args.timeout,
        headers,
        ..Plan::new(targets, pace)
    }
    .validate()?;

    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    let signal = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_signal.cancel();
        }
    });
    let summary = execute(Arc::new(plan), cancel).await;
    signal.abort();
    let summary = summary?;
    let pace = match pace {
        Pace::Open { rate } => format!("open loop at {rate} req/s"),
        Pace::Closed => "closed loop".to_owned(),
    };
    println!("{pace}, {protocol:?}, {} connections: {summary}", args.connections);
    if args.json {
        let line = serde_json::json!({ "mode": "load", "pace": pace, "protocol": protocol, "summary": summary });
        println!("{line}");
    }
    Ok(if summary.ok > 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
