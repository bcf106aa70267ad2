use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("/etc/rampart/proxy.toml"), text)
}

#[test]
fn defaults_and_relative_flags_path() {
    let c = parse("flags = \"flags.yaml\"\n").unwrap();
    assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(c.admin, "127.0.0.1:9901".parse().unwrap());
    assert_eq!(c.upstream.authority.as_str(), "127.0.0.1:3000");
    assert_eq!(c.flags.as_deref(), Some(Path::new("/etc/rampart/flags.yaml")));
    assert!(c.control_plane.is_none());
    assert_eq!(c.header_prefix, "x-flag-");
    assert_eq!(
        c.context,
        [Attribute {
            name: "targetingKey".into(),
            sources: vec![Source::Header(HeaderName::from_static("x-user-id"))]
        }]
    );
}

#[test]
fn context_sources() {
    let c = parse(
        r#"flags = "f.yaml"
[context]
targetingKey = ["header:X-User-Id", "cookie:uid", "query:user"]
route = "path"
verb = ["method"]
site = ["host"]
"#,
    )
    .unwrap();
    let tk = &c.context.iter().find(|a| a.name == "targetingKey").unwrap().sources;
    assert_eq!(
        tk,
        &[
            Source::Header(HeaderName::from_static("x-user-id")),
            Source::Cookie("uid".into()),
            Source::Query("user".into())
        ]
    );
    assert_eq!(c.context.len(), 4);
}

#[test]
fn errors_are_located() {
    let e = parse("flags = \"f\"\nlisten = 12\n").unwrap_err().to_string();
    assert!(e.starts_with("/etc/rampart/proxy.toml:2:10: "), "{e}");
    let e = parse("flags = \"f\"\nbogus = 1\n").unwrap_err().to_string();
    assert!(e.starts_with("/etc/rampart/proxy.toml:2:1: unknown field `bogus`"), "{e}");
    let e = parse("flags = \"f\"\n[context]\nemail = [\"smoke:signal\"]\n").unwrap_err().to_string();
    assert!(e.starts_with("/etc/rampart/proxy.toml: context.email: \"smoke:signal\" is not a source"), "{e}");
    let e = parse("flags = \"f\"\nupstream = \"127.0.0.1:3000\"\n").unwrap_err().to_string();
    assert!(e.contains("upstream: "), "{e}");
    let e = parse("flags = \"f\"\nupstream = \"https://x\"\n").unwrap_err().to_string();
    assert!(e.contains("only http://"), "{e}");
    let e = parse("flags = \"f\"\n[context]\nx = \"header:x-flag-a\"\n").unwrap_err().to_string();
    assert!(e.contains("under the flag-header prefix"), "{e}");
    let e = parse("flags = \"f\"\nupstream_timeout = \"soon\"\n").unwrap_err().to_string();
    assert!(e.starts_with("/etc/rampart/proxy.toml:2:"), "{e}");
    let e = parse("listen = \"127.0.0.1:1\"\n").unwrap_err().to_string();
    assert!(e.contains("flags: missing"), "{e}");
    let e = parse("control_plane = \"nope\"\n").unwrap_err().to_string();
    assert!(e.contains("control_plane: "), "{e}");
}

#[test]
fn control_plane_settings() {
    let c = parse("control_plane = \"http://127.0.0.1:8400\"\nservice = \"checkout\"\nreport_interval = \"250ms\"\n")
        .unwrap();
    let cp = c.control_plane.unwrap();
    assert_eq!(cp.uris, ["http://127.0.0.1:8400"]);
    assert_eq!(cp.service, "checkout");
    assert_eq!(cp.report_interval, Duration::from_millis(250));
    assert!(cp.proxy_id.ends_with(&format!("-{}", std::process::id())), "{}", cp.proxy_id);
    assert_eq!(cp.cache, Path::new("/etc/rampart/rampart-flags.cache.json"));
    assert!(c.flags.is_none(), "a control plane needs no local flags file");
}

#[test]
fn control_plane_takes_one_url_or_a_list_tried_in_turn() {
    let c = parse("control_plane = [\"http://10.0.0.1:8400\", \"http://10.0.0.2:8400/\"]\n").unwrap();
    assert_eq!(c.control_plane.unwrap().uris, ["http://10.0.0.1:8400", "http://10.0.0.2:8400/"]);
    let c = parse("control_plane = [\"http://10.0.0.1:8400\"]\n").unwrap();
    assert_eq!(c.control_plane.unwrap().uris, ["http://10.0.0.1:8400"]);

    let e = |text: &str| parse(text).unwrap_err().to_string();
    assert_eq!(e("control_plane = []\n"), "/etc/rampart/proxy.toml: control_plane: needs at least one URL");
    assert_eq!(
        e("control_plane = [\"http://a:8400\", \"b:8400\"]\n"),
        "/etc/rampart/proxy.toml: control_plane[1]: \"b:8400\" is not a URL like http://127.0.0.1:8400"
    );
    assert_eq!(
        e("control_plane = [\"http://a:8400\", 8400]\n"),
        "/etc/rampart/proxy.toml: control_plane[1]: must be a URL like \"http://127.0.0.1:8400\" or a list of them"
    );
    assert!(e("control_plane = 8400\n").contains(": control_plane: must be a URL"), "{}", e("control_plane = 8400\n"));
    assert!(
        e("control_plane = [\"http://a:8400\", \"http://a:8400\"]\n")
            .contains("control_plane[1]: \"http://a:8400\" is listed twice")
    );
    assert!(e("control_plane = \"ftp://a:8400\"\n").contains("control_plane: \"ftp://a:8400\" is not a URL"));
    assert!(e("control_plane = \"http://a:8400/v1\"\n").contains("control_plane: \"http://a:8400/v1\" is not a URL"));
    assert!(
        e("control_plane = [\"http://a:8400\"]\nreport_interval = \"0s\"\n")
            .contains("report_interval: must be above zero")
    );
}

#[test]
fn query_servers_default_to_flagds_ports_and_can_be_turned_off() {
    let c = parse("flags = \"f.yaml\"\n").unwrap();
    assert_eq!(c.queries.grpc, Some("127.0.0.1:8013".parse().unwrap()));
    assert_eq!(c.queries.ofrep, Some("127.0.0.1:8016".parse().unwrap()));
    assert_eq!(c.queries.keep_alive, Duration::from_secs(20));
    let c = parse(
        "flags = \"f.yaml\"\n[queries]\ngrpc = \"off\"\nunix_socket = \"flagd.sock\"\n\
         [queries.context]\ntier = \"gold\"\nshard = 3\n[queries.headers]\nX-User-Id = \"targetingKey\"\n",
    )
    .unwrap();
    assert_eq!(c.queries.grpc, None);
    assert_eq!(c.queries.unix_socket.as_deref(), Some(Path::new("/etc/rampart/flagd.sock")));
    assert_eq!(c.queries.context.get("shard"), Some(&serde_json::json!(3)));
    assert_eq!(c.queries.headers, [(HeaderName::from_static("x-user-id"), "targetingKey".to_owned())]);
    let e = parse("flags = \"f\"\n[queries]\ngrpc = \"8013\"\n").unwrap_err().to_string();
    assert!(e.contains("queries.grpc: \"8013\" is not an address"), "{e}");
    let e = parse("flags = \"f\"\n[queries.headers]\nx-a = 1\n").unwrap_err().to_string();
    assert!(e.contains("queries.headers.x-a: must name a context key"), "{e}");
    let e = parse("flags = \"f\"\n[queries]\nports = 1\n").unwrap_err().to_string();
    assert!(e.contains("unknown field `ports`"), "{e}");
}

#[test]
fn propagation_settings_and_located_errors() {
    let key = "key = \"0123456789abcdef0123456789abcdef\"";
    assert!(parse("flags = \"f\"\n").unwrap().propagation.is_none());
    let p = parse(&format!("flags = \"f\"\n[propagation]\n{key}\n")).unwrap().propagation.unwrap();
    assert_eq!((p.header.as_str(), p.override_header.as_str()), ("x-rampart-assignments", "x-rampart-override"));
    assert_eq!(p.ttl, Duration::from_secs(60));
    assert!(p.trust && p.emit && p.overrides);
    let p = parse(&format!("flags = \"f\"\n[propagation]\n{key}\nheader = \"X-Hop\"\nttl = \"5s\"\ntrust = false\n"))
        .unwrap()
        .propagation
        .unwrap();
    assert_eq!((p.header.as_str(), p.ttl, p.trust, p.emit), ("x-hop", Duration::from_secs(5), false, true));

    let e = |extra: &str| parse(&format!("flags = \"f\"\n[propagation]\n{extra}\n")).unwrap_err().to_string();
    assert_eq!(
        e("key = \"short\""),
        "/etc/rampart/proxy.toml: propagation.key: the key is 5 bytes; at least 32 are needed"
    );
    assert!(e("").ends_with("propagation: needs key or key_file"), "{}", e(""));
    assert!(e(&format!("{key}\nkey_file = \"k\"")).ends_with("propagation: set key or key_file, not both"));
    let missing = e("key_file = \"rampart.key\"");
    assert!(missing.starts_with("/etc/rampart/proxy.toml: propagation.key_file: cannot read /etc/rampart/rampart.key"));
    assert!(e(&format!("{key}\nheader = \"x-flag-hop\"")).contains("propagation.header: \"x-flag-hop\" is under"));
    assert!(e(&format!("{key}\noverride_header = \"x-rampart-assignments\"")).contains("must differ"));
    assert!(e(&format!("{key}\nttl = \"0s\"")).contains("propagation.ttl: must be at least 1s"));
    assert!(e(&format!("{key}\nsecret = 1")).starts_with("/etc/rampart/proxy.toml:4:1: unknown field `secret`"));
}
