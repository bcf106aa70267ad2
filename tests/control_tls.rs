//! TLS between sidecars and the control plane: the control plane accepts only streams that
//! present a client certificate from its CA or a bearer token from its list; sidecars with either
//! get their flags over TLS. The HTTP API is served over TLS with the same certificate, and the CLI
//! verifies it against `--ca-file`.

#[path = "../proxy/tests/support/certs.rs"]
mod certs;
mod inprocess;
#[path = "../proxy/tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use rampart_proto::rampart::v1::ramp_control_client::RampControlClient;
use rampart_proto::rampart::v1::{Hello, ProxyMessage, proxy_message};
use support::*;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

const FLAGS: &str = "flags:\n  banner:\n    state: ENABLED\n    variants: { a: 1, b: 2 }\n    defaultVariant: b\n";

async fn control(pki: &certs::Pki, dir: &std::path::Path) -> (SocketAddr, CancellationToken) {
    std::fs::write(dir.join("flags.yaml"), FLAGS).unwrap();
    std::fs::write(dir.join("tokens"), "# sidecars without certificates\nt0k3n-for-b\n").unwrap();
    let text = format!(
        "flags = \"flags.yaml\"\nstore = \"c.db\"\ntokens_file = \"tokens\"\n[tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n",
        pki.server_cert.display(),
        pki.server_key.display(),
        pki.ca.display()
    );
    let config = rampart_control::Config::parse(&dir.join("control.toml"), &text).unwrap();
    let control = rampart_control::Control::open(&config).unwrap();
    let (grpc, http) =
        (TcpListener::bind("127.0.0.1:0").await.unwrap(), TcpListener::bind("127.0.0.1:0").await.unwrap());
    let addr = grpc.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(control.run(grpc, http, stop.clone()));
    (addr, stop)
}

/// Opens a stream with `tls` and an optional token; the first answer or the error.
async fn connect(addr: SocketAddr, tls: ClientTlsConfig, token: Option<&str>) -> Result<(), tonic::Status> {
    let channel = Endpoint::from_shared(format!("https://localhost:{}", addr.port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let token = token.map(|t| format!("Bearer {t}").parse::<tonic::metadata::MetadataValue<_>>().unwrap());
    let mut client = RampControlClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
        if let Some(t) = &token {
            req.metadata_mut().insert("authorization", t.clone());
        }
        Ok(req)
    });
    let hello = ProxyMessage {
        msg: Some(proxy_message::Msg::Hello(Hello {
            proxy_id: "probe".into(),
            // The client certificate's name (DNS SAN) is its service.
            service: "sidecar-a".into(),
            flags_version: 0,
            epoch: 1,
        })),
    };
    let mut inbound = client.connect(tokio_stream::iter([hello])).await?.into_inner();
    inbound.message().await?.map(|_| ()).ok_or_else(|| tonic::Status::aborted("no answer"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_sidecars_with_a_valid_certificate_or_token_get_in() {
    let pki = certs::pki();
    let dir = tempfile::tempdir().unwrap();
    let (addr, stop) = control(&pki, dir.path()).await;
    let ca = Certificate::from_pem(std::fs::read(&pki.ca).unwrap());
    let trusting = || ClientTlsConfig::new().ca_certificate(ca.clone()).domain_name("localhost");
    let identity = |c: &std::path::Path, k: &std::path::Path| {
        Identity::from_pem(std::fs::read(c).unwrap(), std::fs::read(k).unwrap())
    };

    assert!(connect(addr, trusting().identity(identity(&pki.client_cert, &pki.client_key)), None).await.is_ok());
    assert!(connect(addr, trusting(), Some("t0k3n-for-b")).await.is_ok());
    let no_credentials = connect(addr, trusting(), None).await.unwrap_err();
    assert_eq!(no_credentials.code(), tonic::Code::Unauthenticated, "{no_credentials}");
    let wrong_token = connect(addr, trusting(), Some("guess")).await.unwrap_err();
    assert_eq!(wrong_token.code(), tonic::Code::Unauthenticated);
    let rogue = connect(addr, trusting().identity(identity(&pki.rogue_cert, &pki.rogue_key)), None).await;
    assert!(rogue.is_err(), "a certificate from another CA is refused");

    // Real sidecars, one with a certificate, one with a token, get their flags over TLS.
    let up = upstream().await;
    std::fs::write(dir.path().join("b.token"), "t0k3n-for-b\n").unwrap();
    let with_cert = format!(
        "control_plane = \"https://127.0.0.1:{}\"\nservice = \"sidecar-a\"\nproxy_id = \"a-1\"\nflags_cache = \"a.cache\"\n[control_auth]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\nserver_name = \"localhost\"\n",
        addr.port(),
        pki.ca.display(),
        pki.client_cert.display(),
        pki.client_key.display()
    );
    let with_token = format!(
        "control_plane = \"https://127.0.0.1:{}\"\nproxy_id = \"b-1\"\nflags_cache = \"b.cache\"\n[control_auth]\nca = \"{}\"\ntoken_file = \"{}\"\n",
        addr.port(),
        pki.ca.display(),
        dir.path().join("b.token").display()
    );
    for extra in [with_cert, with_token] {
        let sc = sidecar(up.addr, "flags: {}\n", &extra).await;
        let got = eventually(Duration::from_secs(10), || async {
            let h = seen(&sc.url("/"), &[]).await;
            header(&h, "x-flag-banner").as_deref() == Some("b")
        })
        .await;
        assert!(got, "the sidecar got the control plane's flags over TLS");
    }
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_is_served_over_tls_and_the_cli_verifies_it() {
    let pki = certs::pki();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("flags.yaml"), FLAGS).unwrap();
    std::fs::write(dir.path().join("operators"), "vic viewer viewer-token-0123456789\n").unwrap();
    let text = format!(
        "flags = \"flags.yaml\"\nstore = \"c.db\"\napi_tokens_file = \"operators\"\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        pki.server_cert.display(),
        pki.server_key.display()
    );
    let control = inprocess::start(dir.path(), &text).await;
    let port = control.http.port();
    let rampart = |url: String, ca: Option<&std::path::Path>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_rampart"));
        cmd.args(["audit", "--json"])
            .env("RAMPART_CONTROL_PLANE", url)
            .env("RAMPART_TOKEN", "viewer-token-0123456789")
            .env_remove("RAMPART_CA_FILE");
        if let Some(ca) = ca {
            cmd.arg("--ca-file").arg(ca);
        }
        cmd.output().unwrap()
    };
    let https = format!("https://localhost:{port}");
    let verified = rampart(https.clone(), Some(&pki.ca));
    assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stderr));
    let audit: serde_json::Value = serde_json::from_slice(&verified.stdout).unwrap();
    assert!(audit.is_array() || audit.is_object(), "{audit}");

    let untrusted = rampart(https, Some(&pki.rogue_cert));
    assert!(!untrusted.status.success());
    let stderr = String::from_utf8_lossy(&untrusted.stderr);
    assert!(stderr.contains("cannot reach the control plane"), "{stderr}");
    let plain = rampart(format!("http://localhost:{port}"), None);
    assert!(!plain.status.success(), "plain HTTP is not served on the TLS port");
    control.stop.cancel();
}
