//! The one guard every mode applies to its targets: a load generator only ever talks to this host.

use std::net::IpAddr;

use hyper::Uri;

/// Why a target is refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NotLoopback {
    #[error("{uri}: not an {schemes} URL with a host")]
    Malformed { uri: Uri, schemes: String },
    #[error("{uri}: refusing a non-loopback target (only 127.0.0.0/8, ::1 and localhost)")]
    Remote { uri: Uri },
    #[error("{uri}: cannot resolve {host}: {source}")]
    Resolve {
        uri: Uri,
        host: String,
        #[source]
        source: std::io::Error,
    },
}

/// Checks that `uri` is `http://` and every address its host resolves to is a loopback address.
pub(crate) async fn check(uri: &Uri) -> Result<(), NotLoopback> {
    check_schemes(uri, &["http"]).await
}

/// [`check`], accepting any of `schemes` (`load` takes `https://` too).
pub(crate) async fn check_schemes(uri: &Uri, schemes: &[&str]) -> Result<(), NotLoopback> {
    let host = match (uri.scheme_str(), uri.host()) {
        (Some(scheme), Some(host)) if schemes.contains(&scheme) => host.trim_start_matches('[').trim_end_matches(']'),
        _ => {
            let schemes = schemes.iter().map(|s| format!("{s}://")).collect::<Vec<_>>().join(" or ");
            return Err(NotLoopback::Malformed { uri: uri.clone(), schemes });
        }
    };
    if let Ok(ip) = host.parse::<IpAddr>() {
        return if ip.is_loopback() { Ok(()) } else { Err(NotLoopback::Remote { uri: uri.clone() }) };
    }
    if host != "localhost" {
        return Err(NotLoopback::Remote { uri: uri.clone() });
    }
    let addrs: Vec<_> = tokio::net::lookup_host((host, 0))
        .await
        .map_err(|source| NotLoopback::Resolve { uri: uri.clone(), host: host.to_owned(), source })?
        .collect();
    if addrs.is_empty() || addrs.iter().any(|a| !a.ip().is_loopback()) {
        return Err(NotLoopback::Remote { uri: uri.clone() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_loopback_passes() {
        for ok in ["http://127.0.0.1:8400", "http://127.1.2.3", "http://[::1]:8400", "http://localhost:8400"] {
            check(&ok.parse().unwrap()).await.unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["http://10.0.0.1:8400", "http://0.0.0.0:8400", "http://example.com", "https://127.0.0.1", "/x"] {
            assert!(check(&bad.parse().unwrap()).await.is_err(), "{bad} accepted");
        }
        let tls = ["http", "https"];
        check_schemes(&"https://127.0.0.1:8443".parse().unwrap(), &tls).await.unwrap();
        for bad in ["https://10.0.0.1:8443", "https://example.com", "ftp://127.0.0.1"] {
            assert!(check_schemes(&bad.parse().unwrap(), &tls).await.is_err(), "{bad} accepted");
        }
    }
}
