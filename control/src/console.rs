//! The web console's static shell: the HTML page, its stylesheet and JavaScript modules and the
//! vendored charting library (uPlot, MIT), embedded in the binary and served at `/` and
//! `/console/…`. The shell holds no data: the page reads everything from the JSON API with the
//! operator's token, so it is served without one (see `operators.rs`).

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// `(path under /console/, content type, bytes)`.
const ASSETS: &[(&str, &str, &[u8])] = &[
    ("style.css", "text/css; charset=utf-8", include_bytes!("../console/style.css")),
    ("app.js", "text/javascript; charset=utf-8", include_bytes!("../console/app.js")),
    ("api.js", "text/javascript; charset=utf-8", include_bytes!("../console/api.js")),
    ("ui.js", "text/javascript; charset=utf-8", include_bytes!("../console/ui.js")),
    ("charts.js", "text/javascript; charset=utf-8", include_bytes!("../console/charts.js")),
    ("pages/ramps.js", "text/javascript; charset=utf-8", include_bytes!("../console/pages/ramps.js")),
    ("pages/ramp.js", "text/javascript; charset=utf-8", include_bytes!("../console/pages/ramp.js")),
    ("pages/flags.js", "text/javascript; charset=utf-8", include_bytes!("../console/pages/flags.js")),
    ("pages/sidecars.js", "text/javascript; charset=utf-8", include_bytes!("../console/pages/sidecars.js")),
    ("pages/dora.js", "text/javascript; charset=utf-8", include_bytes!("../console/pages/dora.js")),
    (
        "vendor/uplot/uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../console/vendor/uplot/uPlot.iife.min.js"),
    ),
    ("vendor/uplot/uPlot.min.css", "text/css; charset=utf-8", include_bytes!("../console/vendor/uplot/uPlot.min.css")),
    ("vendor/uplot/LICENSE", "text/plain; charset=utf-8", include_bytes!("../console/vendor/uplot/LICENSE")),
];

const INDEX: &[u8] = include_bytes!("../console/index.html");

/// Scripts, styles, API reads and images from this origin only; no inline script or style
/// (uPlot sizes its elements through the DOM, which the policy allows).
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// Whether `path` is the console's shell, served without a token.
pub(crate) fn is_shell(path: &str) -> bool {
    path == "/" || path.starts_with("/console/")
}

/// A weak validator of the embedded bytes: they change only with the binary.
fn etag(bytes: &[u8]) -> HeaderValue {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    HeaderValue::from_str(&format!("\"{:016x}\"", h.finish())).unwrap_or(HeaderValue::from_static("\"0\""))
}

fn serve(headers: &HeaderMap, content_type: &'static str, bytes: &'static [u8]) -> Response {
    let tag = etag(bytes);
    let fresh = headers.get(header::IF_NONE_MATCH).is_some_and(|v| v == tag);
    let common = [
        (header::ETAG, tag),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP)),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
    ];
    if fresh {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (common, [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))], bytes).into_response()
}

/// `GET /`: the console's page.
pub(crate) async fn index(headers: HeaderMap) -> Response {
    serve(&headers, "text/html; charset=utf-8", INDEX)
}

/// `GET /console/{path}`: one embedded asset.
pub(crate) async fn asset(headers: HeaderMap, Path(path): Path<String>) -> Response {
    match ASSETS.iter().find(|(p, _, _)| *p == path) {
        Some((_, content_type, bytes)) => serve(&headers, content_type, bytes),
        None => (StatusCode::NOT_FOUND, "no such console file\n").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_the_page_imports_is_embedded() {
        let index = std::str::from_utf8(INDEX).unwrap();
        for (path, _, bytes) in ASSETS {
            assert!(!bytes.is_empty(), "{path}");
        }
        // Every `./x.js` or `/console/x` a module or the page names is served.
        let mut texts = vec![index];
        texts.extend(
            ASSETS
                .iter()
                .filter(|(p, _, _)| p.ends_with(".js") && !p.starts_with("vendor"))
                .map(|(_, _, b)| std::str::from_utf8(b).unwrap()),
        );
        for text in texts {
            for part in text.split(['"', '\'']).filter(|s| s.starts_with("/console/")) {
                let path = part.trim_start_matches("/console/");
                assert!(ASSETS.iter().any(|(p, _, _)| *p == path), "{part} is not embedded");
            }
        }
    }
}
