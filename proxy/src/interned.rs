//! The snapshot's header names and values as `'static` strings, so that the request path copies
//! them instead of counting references. A `HeaderName` or `HeaderValue` made from a string is
//! reference counted: each request cloned one name and one value per injected flag into its
//! header map and dropped them after writing the head, an atomic read-modify-write each way (1.3%
//! of a saturated proxy's samples with 10 flags: `benches/compare/perf-2026-12-01-5f28ce1.md`).
//! A static one is copied.
//!
//! Each distinct string is leaked once for the life of the process, up to [`BUDGET`] bytes in all;
//! past that (a process that has seen that many distinct flag keys and variant names) new strings
//! stay reference counted, which is only slower. Snapshot builds call this, never the request path.

use std::collections::HashSet;
use std::sync::{LazyLock, Mutex, PoisonError};

use http::{HeaderName, HeaderValue};

/// Bytes leaked at most (about 10 000 flags' names and variants).
const BUDGET: usize = 256 * 1024;

#[derive(Default)]
struct Interned {
    strings: HashSet<&'static str>,
    bytes: usize,
}

static INTERNED: LazyLock<Mutex<Interned>> = LazyLock::new(Mutex::default);

/// `s` for the life of the process: the one leaked copy, made now if there is none and the
/// budget allows.
fn intern(s: &str) -> Option<&'static str> {
    let mut interned = INTERNED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(&found) = interned.strings.get(s) {
        return Some(found);
    }
    if interned.bytes + s.len() > BUDGET {
        return None;
    }
    let leaked: &'static str = Box::leak(s.into());
    interned.bytes += s.len();
    interned.strings.insert(leaked);
    Some(leaked)
}

/// `name`, static when the budget allows.
pub(crate) fn name(name: HeaderName) -> HeaderName {
    // A name's `as_str` is valid and lowercase, which is what `from_static` accepts.
    intern(name.as_str()).map_or(name, HeaderName::from_static)
}

/// `value`, static when it is visible ASCII (what `from_static` accepts; `to_str` checks the
/// same) and the budget allows.
pub(crate) fn value(value: HeaderValue) -> HeaderValue {
    match value.to_str().ok().and_then(intern) {
        Some(s) => HeaderValue::from_static(s),
        None => value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_values_come_back_equal_and_shared() {
        let n = name(HeaderName::from_static("x-flag-interned-test"));
        assert_eq!(n, "x-flag-interned-test");
        let again = name(HeaderName::try_from(String::from("x-flag-interned-test")).unwrap());
        assert_eq!(again.as_str().as_ptr(), n.as_str().as_ptr(), "one leaked copy per string");
        let v = value(HeaderValue::from_static("treatment-b"));
        assert_eq!(v, "treatment-b");
        assert_eq!(value(HeaderValue::from_static("treatment-b")).as_bytes().as_ptr(), v.as_bytes().as_ptr());
    }

    #[test]
    fn a_value_from_static_cannot_hold_stays_as_it_is() {
        // Bytes above 0x7f are valid in a header value but not in `from_static`.
        let v = HeaderValue::from_bytes("grün".as_bytes()).unwrap();
        assert_eq!(value(v.clone()), v);
        // A standard header name comes back as itself.
        assert_eq!(name(http::header::HOST), http::header::HOST);
    }

    #[test]
    fn past_the_budget_strings_stay_reference_counted() {
        let big = "a".repeat(BUDGET + 1);
        let v = HeaderValue::from_str(&big).unwrap();
        assert!(intern(&big).is_none());
        assert_eq!(value(v.clone()), v);
    }
}
