//! Builds a request's evaluation context from the configured sources (headers, cookies, query
//! parameters, method, path, host), borrowing from the request: no heap allocation unless a query
//! value needs percent-decoding.

use http::Request;
use http::header::{COOKIE, HOST};
use rampart_flags::{Bump, Context};

use crate::config::{Attribute, Source};

/// The context of `req` under `attrs`; the first present source of each attribute wins.
pub(crate) fn context<'a, B>(attrs: &'a [Attribute], req: &'a Request<B>, arena: &'a Bump) -> Context<'a> {
    let mut builder = Context::builder(arena);
    for attr in attrs {
        if let Some(value) = attr.sources.iter().find_map(|s| lookup(s, req, arena)) {
            builder = builder.attr(&attr.name, value);
        }
    }
    builder.build()
}

fn lookup<'a, B>(source: &'a Source, req: &'a Request<B>, arena: &'a Bump) -> Option<&'a str> {
    match source {
        Source::Header(name) => req.headers().get(name).and_then(|v| v.to_str().ok()),
        Source::Cookie(name) => {
            req.headers().get_all(COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(
                |pair| {
                    let (k, v) = pair.trim().split_once('=')?;
                    (k == name).then(|| v.trim_matches('"'))
                },
            )
        }
        Source::Query(name) => {
            let query = req.uri().query()?;
            form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| match v {
                std::borrow::Cow::Borrowed(s) => s,
                std::borrow::Cow::Owned(s) => arena.alloc_str(&s),
            })
        }
        Source::Method => Some(req.method().as_str()),
        Source::Path => Some(req.uri().path()),
        Source::Host => {
            req.headers().get(HOST).and_then(|v| v.to_str().ok()).or_else(|| req.uri().authority().map(|a| a.as_str()))
        }
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderName;

    use super::*;

    fn attr(name: &str, sources: Vec<Source>) -> Attribute {
        Attribute { name: name.to_owned(), sources }
    }

    #[test]
    fn first_present_source_wins() {
        let attrs = vec![
            attr(
                "targetingKey",
                vec![Source::Header(HeaderName::from_static("x-user-id")), Source::Cookie("uid".into())],
            ),
            attr("q", vec![Source::Query("user name".into())]),
            attr("m", vec![Source::Method]),
            attr("p", vec![Source::Path]),
            attr("h", vec![Source::Host]),
            attr("absent", vec![Source::Query("nope".into())]),
        ];
        let req = Request::get("/a/b?x=1&user+name=J%C3%BCrgen")
            .header("cookie", "a=1; uid=\"c-7\"")
            .header("host", "shop.example")
            .body(())
            .unwrap();
        let arena = Bump::new();
        let ctx = context(&attrs, &req, &arena);
        assert_eq!(ctx.targeting_key(), Some("c-7"));
        assert_eq!(ctx.str_attr("q"), Some("Jürgen"));
        assert_eq!(ctx.str_attr("m"), Some("GET"));
        assert_eq!(ctx.str_attr("p"), Some("/a/b"));
        assert_eq!(ctx.str_attr("h"), Some("shop.example"));
        assert_eq!(ctx.str_attr("absent"), None);

        let req = Request::get("/").header("x-user-id", "u-1").header("cookie", "uid=c-7").body(()).unwrap();
        assert_eq!(context(&attrs, &req, &arena).targeting_key(), Some("u-1"));
    }
}
