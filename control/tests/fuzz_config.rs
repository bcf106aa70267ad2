//! Fuzz target for the control plane's configuration: arbitrary text, and TOML documents built from
//! the real keys with values of every type, whole and damaged, go through
//! `rampart_control::Config::parse` — with the token files it reads (`tokens_file`,
//! `api_tokens_file`) holding arbitrary lines. It answers a config or an error naming the file,
//! never a panic. Paths resolve inside an empty temporary directory. Bounded case counts.

use std::path::Path;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use rampart_control::Config;
use toml::{Table, Value};

const TOP: &[&str] =
    &["grpc_listen", "http_listen", "flags", "store", "tokens_file", "api_tokens_file", "allow_unauthenticated"];
const TLS: &[&str] = &["cert", "key", "client_ca"];

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(vec![
            "127.0.0.1:0", "127.0.0.1:8400", "0.0.0.0:8401", "[::1]:0", "127.0.0.1:65536", "localhost:80",
            "tokens", "api-tokens", "flags.yaml", "store.db", ":memory:", "/", "", "..", "\u{0}", "é",
        ])
        .prop_map(str::to_owned),
        2 => "\\PC{0,16}",
        1 => Just("a".repeat(100_000)),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    let scalar = prop_oneof![
        4 => text().prop_map(Value::String),
        2 => prop_oneof![Just(0i64), Just(-1), Just(i64::MAX), Just(i64::MIN), 0i64..100_000].prop_map(Value::Integer),
        1 => any::<f64>().prop_map(Value::Float),
        2 => any::<bool>().prop_map(Value::Boolean),
    ];
    scalar.prop_recursive(2, 16, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            vec((text(), inner), 0..4).prop_map(|kv| Value::Table(kv.into_iter().collect())),
        ]
    })
}

fn table(keys: &'static [&'static str]) -> impl Strategy<Value = Table> {
    let key = prop_oneof![8 => select(keys).prop_map(str::to_owned), 1 => text()];
    vec((key, value()), 0..6).prop_map(|kv| kv.into_iter().collect())
}

/// Lines of a token file: well-formed ones (`token`, `service token`, `service/proxy token`,
/// `name role token`) and junk.
fn token_lines() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        3 => ("[a-z]{1,8}", select(vec!["viewer", "operator", "admin", "root", ""]), "[A-Za-z0-9]{0,24}")
            .prop_map(|(n, r, t)| format!("{n} {r} {t}")),
        2 => ("[a-z/]{0,10}", "[A-Za-z0-9]{0,24}").prop_map(|(s, t)| format!("{s} {t}")),
        1 => "\\PC{0,40}",
        1 => Just(String::from("# comment")),
        1 => Just("t".repeat(70_000)),
    ];
    vec(line, 0..8).prop_map(|lines| lines.join("\n"))
}

fn parse(dir: &Path, text: &str) -> Result<(), TestCaseError> {
    if let Err(e) = Config::parse(&dir.join("control.toml"), text) {
        let shown = e.to_string();
        prop_assert!(shown.contains("control.toml"), "the error names the file: {}", shown);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_text_never_panics(
        bytes in vec(any::<u8>(), 0..512),
        text in prop_oneof![".{0,256}", "[\\[\\]{}=\"'.,a-z0-9_ \n#\\-:]{0,200}"],
    ) {
        let dir = tempfile::tempdir().unwrap();
        parse(dir.path(), &String::from_utf8_lossy(&bytes))?;
        parse(dir.path(), &text)?;
    }

    /// Documents of the real keys, token files of arbitrary lines, whole and with a splice of junk.
    #[test]
    fn generated_documents_never_panic(
        mut doc in table(TOP),
        tls in proptest::option::weighted(0.2, table(TLS)),
        tokens in proptest::option::weighted(0.5, (token_lines(), any::<bool>())),
        at in any::<prop::sample::Index>(),
        junk in ".{0,4}",
    ) {
        let dir = tempfile::tempdir().unwrap();
        if let Some(t) = tls {
            doc.insert("tls".to_owned(), Value::Table(t));
        }
        if let Some((lines, api)) = tokens {
            std::fs::write(dir.path().join("tokens"), lines).unwrap();
            let key = if api { "api_tokens_file" } else { "tokens_file" };
            doc.insert(key.to_owned(), Value::String("tokens".to_owned()));
        }
        let Ok(text) = toml::to_string(&doc) else { return Ok(()) };
        parse(dir.path(), &text)?;
        let chars: Vec<char> = text.chars().collect();
        let at = at.index(chars.len() + 1);
        let damaged: String = chars[..at].iter().copied().chain(junk.chars()).chain(chars[at..].iter().copied()).collect();
        parse(dir.path(), &damaged)?;
    }
}

/// Hostile configuration text: deep nesting, huge keys, a multi-byte character where the TOML
/// error points. Each is answered, never a panic.
#[test]
fn hostile_config_text_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        format!("flags = {}{}\n", "[".repeat(100_000), "]".repeat(100_000)),
        format!("{} = 1\n", vec!["a"; 100_000].join(".")),
        format!("{} = 1\n", "k".repeat(1 << 20)),
        "grpc_listen = \"é\u{1F980}\"\nstore = 3\n".to_owned(),
        "\u{1F980}\u{1F980} = \u{1F980}\n".to_owned(),
        "grpc_listen = \"127.0.0.1:0\"\ngrpc_listen = \"127.0.0.1:1\"\n".to_owned(),
        "[tls]\ncert = \"missing.pem\"\nkey = \"missing.key\"\n".to_owned(),
        "tokens_file = \"absent\"\n".to_owned(),
    ];
    for text in &cases {
        if let Err(e) = Config::parse(&dir.path().join("control.toml"), text) {
            assert!(e.to_string().contains("control.toml"), "{e}");
        }
    }
    assert!(Config::parse(&dir.path().join("control.toml"), &cases[0]).is_err());
}
