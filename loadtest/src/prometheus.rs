//! Scraping a Prometheus text endpoint and reading histograms from it, so a run can report the
//! change of a server-side histogram between its start and its end.

use std::time::Duration;

use http_body_util::{BodyExt as _, Empty};
use hyper::Uri;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ScrapeError {
    #[error("GET {uri}: {source}")]
    Request {
        uri: Uri,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("GET {uri}: {source}")]
    Body {
        uri: Uri,
        #[source]
        source: hyper::Error,
    },
    #[error("GET {uri}: status {status}")]
    Status { uri: Uri, status: hyper::StatusCode },
    #[error("GET {uri}: timed out")]
    Timeout { uri: Uri },
    #[error("GET {uri}: the body is not UTF-8")]
    Utf8 { uri: Uri },
}

/// Fetches the exposition text at `uri`.
pub(crate) async fn scrape(uri: &Uri) -> Result<String, ScrapeError> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let fetch = async {
        let response =
            client.get(uri.clone()).await.map_err(|source| ScrapeError::Request { uri: uri.clone(), source })?;
        if !response.status().is_success() {
            return Err(ScrapeError::Status { uri: uri.clone(), status: response.status() });
        }
        let body =
            response.into_body().collect().await.map_err(|source| ScrapeError::Body { uri: uri.clone(), source })?;
        String::from_utf8(body.to_bytes().to_vec()).map_err(|_| ScrapeError::Utf8 { uri: uri.clone() })
    };
    tokio::time::timeout(Duration::from_secs(5), fetch).await.map_err(|_| ScrapeError::Timeout { uri: uri.clone() })?
}

/// A histogram as exposed: cumulative bucket counts by upper bound (`+Inf` last), sum and count.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub(crate) struct Histogram {
    /// `(le, cumulative count)`, by increasing `le`.
    pub(crate) buckets: Vec<(f64, f64)>,
    pub(crate) sum: f64,
    pub(crate) count: f64,
}

impl Histogram {
    /// The histogram `name` in `text` (every label set added up); an empty one when absent.
    pub(crate) fn parse(text: &str, name: &str) -> Histogram {
        let mut h = Histogram::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some(rest) = line.strip_prefix(name) else { continue };
            let Some((series, value)) = rest.rsplit_once(' ') else { continue };
            let Ok(value) = value.trim().parse::<f64>() else { continue };
            if let Some(labels) = series.strip_prefix("_bucket{") {
                let Some(le) = labels.split(',').find_map(|l| l.trim().strip_prefix("le=\"")) else { continue };
                let le = le.trim_end_matches(['"', '}']);
                let le = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::NAN) };
                match h.buckets.iter_mut().find(|(b, _)| *b == le) {
                    Some((_, c)) => *c += value,
                    None => h.buckets.push((le, value)),
                }
            } else if series == "_sum" || series.starts_with("_sum{") {
                h.sum += value;
            } else if series == "_count" || series.starts_with("_count{") {
                h.count += value;
            }
        }
        h.buckets.retain(|(le, _)| !le.is_nan());
        h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        h
    }

    /// What was added between `earlier` and `self` (same bucket layout).
    pub(crate) fn since(&self, earlier: &Histogram) -> Histogram {
        let before = |le: f64| earlier.buckets.iter().find(|(b, _)| *b == le).map_or(0.0, |(_, c)| *c);
        Histogram {
            buckets: self.buckets.iter().map(|&(le, c)| (le, c - before(le))).collect(),
            sum: self.sum - earlier.sum,
            count: self.count - earlier.count,
        }
    }

    pub(crate) fn mean(&self) -> Option<f64> {
        (self.count > 0.0).then(|| self.sum / self.count)
    }

    /// The `q`-quantile, interpolated linearly inside its bucket as Prometheus' `histogram_quantile`
    /// does; a quantile in the `+Inf` bucket reads as the highest finite bound.
    pub(crate) fn quantile(&self, q: f64) -> Option<f64> {
        if self.count <= 0.0 {
            return None;
        }
        let rank = q * self.count;
        let (mut lower, mut below) = (0.0, 0.0);
        for &(le, cumulative) in &self.buckets {
            if cumulative >= rank {
                if le.is_infinite() {
                    return Some(lower);
                }
                let inside = cumulative - below;
                return Some(if inside > 0.0 { lower + (le - lower) * (rank - below) / inside } else { le });
            }
            (lower, below) = (le, cumulative);
        }
        Some(lower)
    }

    /// The share of observations at or below `le` (a bucket bound).
    pub(crate) fn share_at_most(&self, le: f64) -> Option<f64> {
        let c = self.buckets.iter().find(|(b, _)| *b == le)?.1;
        (self.count > 0.0).then(|| c / self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE d histogram\nd_bucket{le=\"0.01\"} 2\nd_bucket{le=\"0.1\"} 6\nd_bucket{le=\"+Inf\"} 8\n\
                        d_sum 1.5\nd_count 8\nd_other 3\n";

    #[test]
    fn parses_and_interpolates() {
        let h = Histogram::parse(TEXT, "d");
        assert_eq!(h.buckets, [(0.01, 2.0), (0.1, 6.0), (f64::INFINITY, 8.0)]);
        assert_eq!((h.sum, h.count), (1.5, 8.0));
        assert_eq!(h.quantile(0.25), Some(0.01));
        assert!((h.quantile(0.5).unwrap() - 0.055).abs() < 1e-9);
        assert_eq!(h.quantile(0.99), Some(0.1));
        assert_eq!(h.share_at_most(0.1), Some(0.75));
        let d = h.since(&Histogram::parse("d_bucket{le=\"0.01\"} 1\nd_count 1\nd_sum 0.001\n", "d"));
        assert_eq!(d.buckets[0], (0.01, 1.0));
        assert_eq!(d.count, 7.0);
        assert_eq!(Histogram::parse(TEXT, "absent"), Histogram::default());
    }
}
