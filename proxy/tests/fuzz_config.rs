//! Fuzz target for the sidecar's configuration file: arbitrary text, and TOML documents built from
//! the real keys with values of every type (addresses, durations, paths, huge numbers, junk), whole
//! and damaged, go through `rampart_proxy::Config::parse`; it answers a config or an error, never a
//! panic, and an error names the file. Paths resolve inside an empty temporary directory. Bounded
//! case counts, so it runs in seconds in CI.

use std::path::Path;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use rampart_proxy::Config;
use toml::{Table, Value};

/// Top-level keys of `proxy.toml`, and the keys of each table.
const TOP: &[&str] = &[
    "listen",
    "upstream",
    "flags",
    "control_plane",
    "service",
    "proxy_id",
    "report_interval",
    "max_series",
    "flags_cache",
    "admin",
    "header_prefix",
    "inject",
    "workers",
    "max_connections",
    "max_header_bytes",
    "header_read_timeout",
    "connect_timeout",
    "upstream_timeout",
    "drain_timeout",
    "pool_idle_timeout",
];
const TABLES: &[(&str, &[&str])] = &[
    ("context", &["targetingKey", "email", "appVersion", "tier"]),
    ("queries", &["grpc", "ofrep", "unix_socket", "keep_alive", "environment", "context", "headers"]),
    (
        "connections",
        &[
            "first_byte_timeout",
            "idle_timeout",
            "body_idle_timeout",
            "h2_ping_interval",
            "h2_ping_timeout",
            "max_per_address",
        ],
    ),
    ("headers", &["allow_underscores", "preserve_host"]),
    ("tls", &["cert", "key", "client_ca"]),
    ("control_auth", &["ca", "cert", "key", "server_name", "token_file"]),
    ("propagation", &["key", "key_file", "header", "override_header", "ttl", "trust", "emit", "overrides"]),
];
const CLUSTER: &[&str] = &["endpoints", "balance", "eject_after", "eject_for", "eject_for_max", "max_idle", "tls"];
const ROUTE: &[&str] = &["flag", "headers", "path_prefix", "cluster", "timeout", "retries"];

/// Strings the parser gives a meaning to, and junk.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(vec![
            "127.0.0.1:0", "127.0.0.1:8080", "[::1]:0", "0.0.0.0:99999", "http://127.0.0.1:3000",
            "https://127.0.0.1:3000", "http://127.0.0.1:3000/path?q", "http://", "unix:/x", "10s", "0s", "250ms",
            "18446744073709551615s", "1e400s", "-1s", "off", "flags.yaml", "../x", "/", "", "x-flag-", "x_flag_",
            "header:x-user-id", "cookie:uid", "query:v", "method", "path", "host", "header:", "round_robin",
            "least_requests", "default", "canary", "\u{0}", "é", "🦀",
        ])
        .prop_map(str::to_owned),
        2 => "\\PC{0,16}",
        1 => Just("a".repeat(100_000)),
    ]
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => text().prop_map(Value::String),
        2 => prop_oneof![Just(0i64), Just(1), Just(-1), Just(i64::MAX), Just(i64::MIN), 0i64..100_000]
            .prop_map(Value::Integer),
        1 => any::<f64>().prop_map(Value::Float),
        1 => any::<bool>().prop_map(Value::Boolean),
    ]
}

/// Any TOML value: scalars, and arrays and tables of them (two levels deep at most).
fn value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(2, 16, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            vec((text(), inner), 0..4).prop_map(|kv| Value::Table(kv.into_iter().collect())),
        ]
    })
}

/// A table with some of `keys` (and now and then an unknown key) set to any value.
fn table(keys: &'static [&'static str]) -> impl Strategy<Value = Table> {
    let key = prop_oneof![8 => select(keys).prop_map(str::to_owned), 1 => text()];
    vec((key, value()), 0..6).prop_map(|kv| kv.into_iter().collect())
}

/// A document built from the real keys: usually with a valid `upstream`, so parsing gets past it.
fn document() -> impl Strategy<Value = Table> {
    let tables =
        TABLES.iter().map(|&(name, keys)| proptest::option::weighted(0.3, table(keys)).prop_map(move |t| (name, t)));
    let tables: Vec<_> = tables.collect();
    (
        table(TOP),
        prop::bool::weighted(0.8),
        tables,
        proptest::option::weighted(0.3, vec((text(), table(CLUSTER)), 0..3)),
        proptest::option::weighted(0.3, vec(table(ROUTE), 0..3)),
    )
        .prop_map(|(mut doc, upstream, tables, clusters, routes)| {
            if upstream {
                doc.insert("upstream".to_owned(), Value::String("http://127.0.0.1:3000".to_owned()));
            }
            for (name, t) in tables.into_iter().filter_map(|(name, t)| Some((name, t?))) {
                doc.insert(name.to_owned(), Value::Table(t));
            }
            if let Some(c) = clusters {
                let c = c.into_iter().map(|(k, v)| (k, Value::Table(v))).collect();
                doc.insert("clusters".to_owned(), Value::Table(c));
            }
            if let Some(r) = routes {
                doc.insert("routes".to_owned(), Value::Array(r.into_iter().map(Value::Table).collect()));
            }
            doc
        })
}

fn parse(dir: &Path, text: &str) -> Result<(), TestCaseError> {
    let path = dir.join("proxy.toml");
    if let Err(e) = Config::parse(&path, text) {
        let shown = e.to_string();
        prop_assert!(shown.contains("proxy.toml"), "the error names the file: {}", shown);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any text parses or fails with an error naming the file.
    #[test]
    fn arbitrary_text_never_panics(
        bytes in vec(any::<u8>(), 0..512),
        text in prop_oneof![".{0,256}", "[\\[\\]{}=\"'.,a-z0-9_ \n#\\-:]{0,200}"],
    ) {
        let dir = tempfile::tempdir().unwrap();
        parse(dir.path(), &String::from_utf8_lossy(&bytes))?;
        parse(dir.path(), &text)?;
    }

    /// Documents of the real keys with values of any type, whole and with a splice of junk.
    #[test]
    fn generated_documents_never_panic(doc in document(), at in any::<prop::sample::Index>(), junk in ".{0,4}") {
        let dir = tempfile::tempdir().unwrap();
        // A float TOML cannot write (none today) would be no input at all: skip it.
        let Ok(text) = toml::to_string(&doc) else { return Ok(()) };
        parse(dir.path(), &text)?;
        let chars: Vec<char> = text.chars().collect();
        let at = at.index(chars.len() + 1);
        let damaged: String = chars[..at].iter().copied().chain(junk.chars()).chain(chars[at..].iter().copied()).collect();
        parse(dir.path(), &damaged)?;
    }
}

/// Hostile configuration text: deep nesting, huge keys and values, odd encodings. Each is refused
/// (or accepted) with an answer, never a panic or a hang.
#[test]
fn hostile_config_text_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let up = "upstream = \"http://127.0.0.1:3000\"\n";
    let deep_array = format!("{up}inject = {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
    let deep_table = format!("{up}[context]\nx = {}1{}\n", "{ a = ".repeat(10_000), " }".repeat(10_000));
    let dotted = format!("{up}{} = 1\n", vec!["a"; 100_000].join("."));
    let long_key = format!("{up}[context]\n{} = [\"header:x\"]\n", "k".repeat(1 << 20));
    let long_value = format!("upstream = \"http://{}:3000\"\n", "h".repeat(1 << 20));
    let many_routes = format!("{up}{}", "[[routes]]\ncluster = \"default\"\n".repeat(20_000));
    let cases = [
        deep_array,
        deep_table,
        dotted,
        long_key,
        long_value,
        many_routes,
        format!("{up}max_connections = 18446744073709551616\n"),
        format!("{up}workers = 0\n"),
        format!("{up}header_read_timeout = \"18446744073709551615s\"\n"),
        format!("{up}[connections]\nidle_timeout = \"99999999999999999999h\"\n"),
        format!("{up}listen = \"127.0.0.1:65536\"\n"),
        "\u{feff}upstream = \"http://127.0.0.1:3000\"\n".to_owned(),
        "upstream = \"http://127.0.0.1:3000\"\r\n\0".to_owned(),
        "upstream = \"http://[::1\"\n".to_owned(),
        "upstream = \"http://127.0.0.1:3000\"\nupstream = \"http://127.0.0.1:3001\"\n".to_owned(),
    ];
    for text in &cases {
        let result = Config::parse(&dir.path().join("proxy.toml"), text);
        if let Err(e) = result {
            assert!(e.to_string().contains("proxy.toml"), "{e}");
        }
    }
    assert!(Config::parse(&dir.path().join("proxy.toml"), &cases[0]).is_err(), "100 000-deep nesting is refused");
}
