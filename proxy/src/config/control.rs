//! `control_plane` as written: one URL, or a list of URLs tried in turn (replicas of one control
//! plane); each entry is validated and located (`control_plane[1]`).

use http::Uri;

/// The URLs of `value` in order; an error is `(key, message)`. `needs_https`: `[control_auth]`
/// sets a CA, so every URL must be `https://`.
pub(super) fn urls(value: &toml::Value, needs_https: bool) -> Result<Vec<Uri>, (String, String)> {
    let entries: Vec<(String, &toml::Value)> = match value {
        toml::Value::Array(items) => {
            items.iter().enumerate().map(|(i, v)| (format!("control_plane[{i}]"), v)).collect()
        }
        one => vec![("control_plane".to_owned(), one)],
    };
    if entries.is_empty() {
        return Err(("control_plane".to_owned(), "needs at least one URL".to_owned()));
    }
    let mut urls: Vec<Uri> = Vec::with_capacity(entries.len());
    for (key, value) in entries {
        let Some(text) = value.as_str() else {
            return Err((key, "must be a URL like \"http://127.0.0.1:8400\" or a list of them".to_owned()));
        };
        let uri = text
            .parse()
            .ok()
            .filter(|u: &Uri| {
                matches!(u.scheme_str(), Some("http" | "https"))
                    && u.authority().is_some()
                    && matches!(u.path(), "" | "/")
                    && u.query().is_none()
            })
            .ok_or_else(|| (key.clone(), format!("\"{text}\" is not a URL like http://127.0.0.1:8400")))?;
        if needs_https && uri.scheme_str() != Some("https") {
            return Err((key, "must be https://… when [control_auth] sets a ca".to_owned()));
        }
        if urls.contains(&uri) {
            return Err((key, format!("\"{text}\" is listed twice")));
        }
        urls.push(uri);
    }
    Ok(urls)
}
