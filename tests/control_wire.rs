//! The sidecar stream's own gRPC framing, driven byte by byte over a raw HTTP/2 connection to a
//! real control plane (SQLite in a temporary directory): a Hello and a report cut into
//! one-byte and odd-sized DATA frames are answered (Welcome, flags, ack) and counted once; a
//! message announced over the size limit, a compressed message, a compressed stream, an unknown
//! method and a stream cut inside a message each end that stream with the gRPC status that says
//! so — and the control plane goes on serving the next one.

mod inprocess;
#[path = "../proxy/tests/support/mod.rs"]
mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use rampart_proto::rampart::v1::{
    ControlMessage, Hello, ProxyMessage, SplitStats, StatsReport, VariantStats, control_message, proxy_message,
};
use serde_json::Value;
use support::*;
use tokio::sync::mpsc;

const CONFIG: &str = "flags = \"flags.yaml\"\nstore = \"c.db\"\n";
const FLAGS: &str = "flags:\n  new-checkout:\n    state: ENABLED\n    variants: { \"on\": true, \"off\": false }\n    defaultVariant: \"off\"\n";
const CONNECT: &str = "/rampart.v1.RampControl/Connect";

type Sender = mpsc::Sender<Result<Frame<Bytes>, Infallible>>;

/// One raw HTTP/2 request to `path`: the sender feeds its body's DATA frames; the response's
/// head comes once the stream is admitted, i.e. after the Hello, so it is awaited in a task.
async fn open(grpc: SocketAddr, path: &str, encoding: Option<&str>) -> (Sender, Pending) {
    let tcp = tokio::net::TcpStream::connect(grpc).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let (tx, rx) = mpsc::channel(64);
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut request = http::Request::post(format!("http://{grpc}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(e) = encoding {
        request = request.header("grpc-encoding", e);
    }
    let response = send.send_request(request.body(body).unwrap());
    (tx, tokio::spawn(async move { response.await.unwrap() }))
}

type Pending = tokio::task::JoinHandle<hyper::Response<Incoming>>;

fn framed(message: &impl Message, flag: u8) -> Vec<u8> {
    let body = message.encode_to_vec();
    let mut wire = vec![flag];
    wire.extend_from_slice(&(body.len() as u32).to_be_bytes());
    wire.extend_from_slice(&body);
    wire
}

/// Sends `wire` as DATA frames of the sizes in `cuts`, cycled.
async fn send_cut(tx: &Sender, wire: &[u8], cuts: &[usize]) {
    let mut at = 0;
    for size in cuts.iter().cycle() {
        if at >= wire.len() {
            break;
        }
        let end = (at + size).min(wire.len());
        // A stream the control plane has refused takes no more: what it said is checked instead.
        let _ = tx.send(Ok(Frame::data(Bytes::copy_from_slice(&wire[at..end])))).await;
        at = end;
    }
}

fn hello() -> ProxyMessage {
    ProxyMessage {
        msg: Some(proxy_message::Msg::Hello(Hello {
            proxy_id: "p1".into(),
            service: "shop".into(),
            flags_version: 0,
            epoch: 1,
        })),
    }
}

fn report(seq: u64, requests: u64) -> ProxyMessage {
    let stats = vec![VariantStats {
        flag: "new-checkout".into(),
        variant: "on".into(),
        requests,
        split: Some(SplitStats { requests, units: requests, ..SplitStats::default() }),
        ..VariantStats::default()
    }];
    ProxyMessage {
        msg: Some(proxy_message::Msg::Report(StatsReport { seq, first_seq: seq, stats, ..StatsReport::default() })),
    }
}

/// Reads a response body's messages until `want` of them, or its end; and its gRPC status (from
/// the trailers, or from the head of a trailers-only response).
struct Answers {
    messages: Vec<ControlMessage>,
    status: Option<String>,
}

async fn read_answers(response: Pending, want: usize) -> Answers {
    let response = tokio::time::timeout(Duration::from_secs(10), response).await.expect("a response").unwrap();
    let head_status = response.headers().get("grpc-status").map(|v| v.to_str().unwrap().to_owned());
    let mut body = response.into_body();
    let mut buf = Vec::new();
    let mut answers = Answers { messages: Vec::new(), status: head_status };
    let read = async {
        while answers.messages.len() < want {
            let Some(frame) = body.frame().await else { break };
            let frame = frame.unwrap();
            if let Some(trailers) = frame.trailers_ref() {
                answers.status = trailers.get("grpc-status").map(|v| v.to_str().unwrap().to_owned());
                break;
            }
            buf.extend_from_slice(frame.data_ref().unwrap());
            while buf.len() >= 5 {
                let len = u32::from_be_bytes(buf[1..5].try_into().unwrap()) as usize;
                if buf.len() < 5 + len {
                    break;
                }
                answers.messages.push(ControlMessage::decode(&buf[5..5 + len]).unwrap());
                buf.drain(..5 + len);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read).await.expect("answers within 10 s");
    answers
}

async fn api(http: SocketAddr, path: &str) -> Value {
    serde_json::from_str(&get(&format!("http://{http}{path}"), &[]).await.1).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_cut_anywhere_are_read_and_bad_framing_ends_only_its_stream() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("flags.yaml"), FLAGS).unwrap();
    let control = inprocess::start(dir.path(), CONFIG).await;
    let (grpc, http) = (control.grpc, control.http);

    // A Hello one byte per frame, then two reports in one buffer cut at odd sizes.
    let (tx, response) = open(grpc, CONNECT, None).await;
    send_cut(&tx, &framed(&hello(), 0), &[1]).await;
    let mut two = framed(&report(1, 7), 0);
    two.extend(framed(&report(2, 5), 0));
    send_cut(&tx, &two, &[3, 17, 2]).await;
    let answers = read_answers(response, 4).await;
    let kinds: Vec<_> = answers
        .messages
        .iter()
        .map(|m| match &m.msg {
            Some(control_message::Msg::Welcome(w)) => format!("welcome {}", w.last_applied_seq),
            Some(control_message::Msg::Flags(_)) => "flags".to_owned(),
            Some(control_message::Msg::Ack(a)) => format!("ack {}", a.seq),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(kinds, ["welcome 0", "flags", "ack 1", "ack 2"]);
    let stats = api(http, "/api/v1/stats/new-checkout").await;
    assert_eq!(stats["variants"]["on"]["requests"], 12, "{stats}");
    drop(tx);

    // Each of these ends its own stream with the status that says why.
    let cases: [(&str, Option<&str>, Vec<u8>, &str); 5] = [
        // A message announced over the 4 MiB limit: refused from its prefix.
        ("oversized", None, [vec![0], (5u32 << 20).to_be_bytes().to_vec()].concat(), "11"),
        ("compressed message", None, framed(&hello(), 1), "13"),
        ("compressed stream", Some("gzip"), framed(&hello(), 0), "12"),
        ("not a Hello", None, framed(&report(1, 1), 0), "3"),
        ("garbage", None, [vec![0, 0, 0, 0, 3], vec![0xff; 3]].concat(), "13"),
    ];
    for (what, encoding, wire, code) in cases {
        let (tx, response) = open(grpc, CONNECT, encoding).await;
        send_cut(&tx, &wire, &[4096]).await;
        let answers = read_answers(response, usize::MAX).await;
        assert_eq!(answers.status.as_deref(), Some(code), "{what}");
    }
    let (tx, response) = open(grpc, "/rampart.v1.RampControl/Nope", None).await;
    drop(tx);
    assert_eq!(read_answers(response, usize::MAX).await.status.as_deref(), Some("12"), "unknown method");

    // Cut inside a message: the stream ends, nothing of it is applied.
    let (tx, response) = open(grpc, CONNECT, None).await;
    let mut wire = framed(&ProxyMessage { msg: hello().msg }, 0);
    let part = framed(&report(3, 100), 0);
    wire.extend_from_slice(&part[..part.len() / 2]);
    send_cut(&tx, &wire, &[64]).await;
    drop(tx);
    let answers = read_answers(response, usize::MAX).await;
    assert_eq!(answers.messages.len(), 2, "welcome and flags only");
    assert_eq!(answers.status.as_deref(), Some("0"), "the stream was answered and closed");

    // The control plane goes on: the sidecar comes back and is counted exactly once more.
    let (tx, response) = open(grpc, CONNECT, None).await;
    send_cut(&tx, &framed(&hello(), 0), &[5000]).await;
    send_cut(&tx, &framed(&report(3, 1), 0), &[5000]).await;
    let answers = read_answers(response, 3).await;
    assert!(matches!(&answers.messages[0].msg, Some(control_message::Msg::Welcome(w)) if w.last_applied_seq == 2));
    assert!(matches!(&answers.messages[2].msg, Some(control_message::Msg::Ack(a)) if a.seq == 3));
    assert_eq!(api(http, "/api/v1/stats/new-checkout").await["variants"]["on"]["requests"], 13);
    drop(tx);
    control.stop.cancel();
}
