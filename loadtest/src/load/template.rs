//! Request headers given on the command line (`--header 'x-user-id: {random}'`), parsed once into
//! a name and a value template; `{random}` becomes a fresh random id per request, `{seq}` the
//! request's sequence number.

use hyper::header::{HeaderName, HeaderValue};

/// Why a `--header` cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HeaderError {
    #[error("--header \"{0}\": expected 'name: value'")]
    Shape(String),
    #[error("--header \"{0}\": invalid header name")]
    Name(String),
    #[error("--header \"{0}\": invalid header value")]
    Value(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Random,
    Seq,
}

/// One header to send with every request.
#[derive(Debug, Clone)]
pub(crate) struct HeaderTemplate {
    name: HeaderName,
    /// The value when it has no placeholder (cloned per request: a reference count).
    fixed: Option<HeaderValue>,
    parts: Vec<Part>,
}

impl HeaderTemplate {
    pub(crate) fn parse(spec: &str) -> Result<HeaderTemplate, HeaderError> {
        let (name, value) = spec.split_once(':').ok_or_else(|| HeaderError::Shape(spec.to_owned()))?;
        let name = HeaderName::try_from(name.trim()).map_err(|_| HeaderError::Name(spec.to_owned()))?;
        let value = value.trim();
        let mut parts = Vec::new();
        let mut rest = value;
        while !rest.is_empty() {
            let (placeholder, len) = if rest.starts_with("{random}") {
                (Some(Part::Random), "{random}".len())
            } else if rest.starts_with("{seq}") {
                (Some(Part::Seq), "{seq}".len())
            } else {
                (None, 0)
            };
            if let Some(p) = placeholder {
                parts.push(p);
                rest = &rest[len..];
                continue;
            }
            let next = rest[1..].find('{').map_or(rest.len(), |i| i + 1);
            match parts.last_mut() {
                Some(Part::Text(t)) => t.push_str(&rest[..next]),
                _ => parts.push(Part::Text(rest[..next].to_owned())),
            }
            rest = &rest[next..];
        }
        let fixed = match parts.as_slice() {
            [] => Some(HeaderValue::from_static("")),
            [Part::Text(t)] => {
                Some(HeaderValue::try_from(t.as_str()).map_err(|_| HeaderError::Value(spec.to_owned()))?)
            }
            _ => {
                // Placeholders render as ASCII digits/hex; check the literal text once.
                let text: String =
                    parts.iter().filter_map(|p| if let Part::Text(t) = p { Some(t.as_str()) } else { None }).collect();
                HeaderValue::try_from(text).map_err(|_| HeaderError::Value(spec.to_owned()))?;
                None
            }
        };
        Ok(HeaderTemplate { name, fixed, parts })
    }

    pub(crate) fn name(&self) -> &HeaderName {
        &self.name
    }

    /// The value for request `seq`, drawing from `rng` for `{random}`.
    pub(crate) fn render(&self, seq: u64, rng: &mut fastrand::Rng) -> HeaderValue {
        if let Some(v) = &self.fixed {
            return v.clone();
        }
        let mut out = String::with_capacity(32);
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Random => {
                    use std::fmt::Write as _;
                    let _ = write!(out, "{:016x}", rng.u64(..));
                }
                Part::Seq => {
                    use std::fmt::Write as _;
                    let _ = write!(out, "{seq}");
                }
            }
        }
        // Text was validated at parse time and placeholders are alphanumeric.
        HeaderValue::try_from(out).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_values_are_parsed_once() {
        let t = HeaderTemplate::parse("X-Tenant:  acme ").unwrap();
        assert_eq!(t.name().as_str(), "x-tenant");
        assert_eq!(t.render(0, &mut fastrand::Rng::with_seed(1)), "acme");
    }

    #[test]
    fn placeholders_render_per_request() {
        let t = HeaderTemplate::parse("x-user-id: u-{random}").unwrap();
        let mut rng = fastrand::Rng::with_seed(7);
        let (a, b) = (t.render(0, &mut rng), t.render(1, &mut rng));
        assert_ne!(a, b);
        assert!(a.to_str().unwrap().starts_with("u-") && a.len() == 18, "{a:?}");
        let s = HeaderTemplate::parse("x-req: {seq}/{x}").unwrap();
        assert_eq!(s.render(42, &mut rng), "42/{x}");
    }

    #[test]
    fn bad_specs_are_refused() {
        assert!(matches!(HeaderTemplate::parse("no colon"), Err(HeaderError::Shape(_))));
        assert!(matches!(HeaderTemplate::parse("bad name: v"), Err(HeaderError::Name(_))));
        assert!(matches!(HeaderTemplate::parse("x: a\u{7f}b"), Err(HeaderError::Value(_))));
        assert!(matches!(HeaderTemplate::parse("x: {random}\u{1}"), Err(HeaderError::Value(_))));
    }
}
