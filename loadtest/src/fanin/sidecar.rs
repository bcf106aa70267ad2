//! One simulated sidecar: opens `RampControl/Connect` (Hello → Welcome), then makes one report per
//! interval on its own staggered schedule and times each from send to `StatsAck`. Like the real
//! reporter (`proxy/src/reporter/pending.rs`) it keeps at most `max_in_flight` reports
//! unacknowledged, keeps what it could not send (merging intervals into the newest unsent report
//! past [`MAX_UNSENT`]), and when the control plane sheds it (`RESOURCE_EXHAUSTED` with a
//! pushback) it waits the pushback, reconnects, and resends what the Welcome says is not applied.
//! Every interval is counted until it is acknowledged: nothing is skipped.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rampart_proto::rampart::v1::{ControlMessage, Hello, ProxyMessage, control_message, proxy_message};
use rampart_stats::SparseHistogram;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;
use tonic::transport::Channel;

use super::synth::Pool;

/// Unsent reports kept apart before new intervals merge into the newest (the sidecar keeps 120;
/// fewer here keeps 10 000 simulated sidecars small).
const MAX_UNSENT: usize = 4;
/// Pushback when a shed stream does not say.
const DEFAULT_PUSHBACK: Duration = Duration::from_secs(1);
/// Most reconnections a stream may need (each after a pushback) before it counts as failed.
const MAX_SHEDS: u64 = 1_000;

/// Why a stream failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StreamError {
    #[error("{0}")]
    Status(#[from] tonic::Status),
    #[error("timed out waiting for the Welcome")]
    Timeout,
    #[error("the control plane closed the stream")]
    Closed,
    #[error("the first message was not a Welcome")]
    NoWelcome,
    #[error("shed more than {MAX_SHEDS} times")]
    TooManySheds,
}

/// One stream's way in: messages go out pre-encoded.
#[derive(Debug)]
struct Conn {
    tx: mpsc::Sender<Bytes>,
    inbound: Streaming<ControlMessage>,
    last_applied: u64,
}

/// An open stream: the Hello was answered.
#[derive(Debug)]
pub(crate) struct Open {
    index: usize,
    channel: Channel,
    hello: Hello,
    conn: Conn,
}

/// When a stream sends: first at `first`, then every `interval`, none at or after `stop`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Schedule {
    pub(crate) first: Instant,
    pub(crate) interval: Duration,
    pub(crate) stop: Instant,
    /// Waiting for the last acknowledgements ends here.
    pub(crate) drain_until: Instant,
    pub(crate) max_in_flight: usize,
}

/// What one stream saw.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// Intervals made (each must end up in an acknowledged report).
    pub(crate) intervals: u64,
    /// Intervals in acknowledged reports.
    pub(crate) intervals_acked: u64,
    /// Reports sent (resends included) and acknowledged.
    pub(crate) sent: u64,
    pub(crate) acked: u64,
    /// Intervals merged into an unsent report (the sidecar's bounded memory at work).
    pub(crate) merged: u64,
    /// Times the control plane shed this stream.
    pub(crate) shed: u64,
    /// Intervals still unacknowledged at the end.
    pub(crate) unacked: u64,
    pub(crate) flags_pushed: u64,
    pub(crate) bytes_sent: u64,
    /// Send → `StatsAck`, in µs.
    pub(crate) ack_latency: SparseHistogram,
    pub(crate) error: Option<String>,
}

/// A pending report: the intervals it carries.
#[derive(Debug)]
struct Entry {
    seq: u64,
    intervals: u64,
    window_start_ms: i64,
    window_end_ms: i64,
    /// When it was last sent on the current stream.
    sent_at: Option<Instant>,
    ever_sent: bool,
}

/// Says Hello as proxy `loadtest-{run}-{index}` and waits for the Welcome.
pub(crate) async fn open(channel: Channel, run: u64, index: usize) -> Result<Open, StreamError> {
    let hello = Hello {
        proxy_id: format!("loadtest-{run:x}-{index:05}"),
        service: "loadtest".to_owned(),
        flags_version: 0,
        epoch: fastrand::u64(1..),
    };
    let conn = connect(&channel, &hello).await?;
    Ok(Open { index, channel, hello, conn })
}

async fn connect(channel: &Channel, hello: &Hello) -> Result<Conn, StreamError> {
    let (tx, rx) = mpsc::channel(64);
    let hello = ProxyMessage { msg: Some(proxy_message::Msg::Hello(hello.clone())) };
    // The channel is fresh: room for the Hello is certain.
    tx.try_send(Bytes::from(prost::Message::encode_to_vec(&hello))).map_err(|_| StreamError::Closed)?;
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    let handshake = async {
        grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let path = tonic::codegen::http::uri::PathAndQuery::from_static("/rampart.v1.RampControl/Connect");
        let mut inbound =
            grpc.streaming(tonic::Request::new(ReceiverStream::new(rx)), path, RawCodec).await?.into_inner();
        match inbound.message().await? {
            Some(ControlMessage { msg: Some(control_message::Msg::Welcome(w)) }) => Ok((inbound, w.last_applied_seq)),
            Some(_) => Err(StreamError::NoWelcome),
            None => Err(StreamError::Closed),
        }
    };
    let (inbound, last_applied) =
        tokio::time::timeout(Duration::from_secs(10), handshake).await.map_err(|_| StreamError::Timeout)??;
    Ok(Conn { tx, inbound, last_applied })
}

/// Makes reports on `schedule` until its stop, waits for the outstanding acks until its drain
/// deadline (or `shutdown`), then closes the stream.
pub(crate) async fn run(open: Open, schedule: Schedule, pool: Arc<Pool>, shutdown: CancellationToken) -> Tally {
    let Open { index, channel, hello, conn } = open;
    let mut s = Sim {
        tally: Tally::default(),
        pending: VecDeque::new(),
        next_seq: 1,
        pool,
        max_in_flight: schedule.max_in_flight,
    };
    let mut rng = fastrand::Rng::with_seed(index as u64);
    let mut tick = tokio::time::interval_at(schedule.first, schedule.interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut window_start = unix_ms();
    let mut sending = true;
    let mut conn = Some(conn);
    let mut away_until: Option<Instant> = None;
    let result: Result<(), StreamError> = 'run: loop {
        if !sending && s.pending.is_empty() {
            break Ok(());
        }
        // Shed: wait out the pushback (intervals keep coming), then reconnect.
        if conn.is_none() {
            let until = away_until.unwrap_or_else(Instant::now);
            tokio::select! {
                () = shutdown.cancelled() => break Ok(()),
                () = tokio::time::sleep_until(schedule.drain_until), if !sending => break Ok(()),
                at = tick.tick(), if sending => {
                    if at >= schedule.stop { sending = false } else { s.interval(&mut window_start) }
                    continue;
                }
                () = tokio::time::sleep_until(until) => {}
            }
            match connect(&channel, &hello).await {
                Ok(c) => {
                    s.welcome(c.last_applied);
                    conn = Some(c);
                    if let Err(e) = s.send(conn.as_ref().map(|c| &c.tx), &mut rng).await {
                        break Err(e);
                    }
                }
                Err(e) => break Err(e),
            }
            continue;
        }
        let Some(c) = conn.as_mut() else { continue };
        let ended: Result<(), StreamError> = tokio::select! {
            () = shutdown.cancelled() => break Ok(()),
            () = tokio::time::sleep_until(schedule.drain_until), if !sending => break Ok(()),
            at = tick.tick(), if sending => {
                if at >= schedule.stop {
                    sending = false;
                    continue;
                }
                s.interval(&mut window_start);
                s.send(Some(&c.tx), &mut rng).await
            }
            msg = c.inbound.message() => match msg {
                Ok(Some(ControlMessage { msg: Some(control_message::Msg::Ack(ack)) })) => {
                    s.ack(ack.seq);
                    s.send(Some(&c.tx), &mut rng).await
                }
                Ok(Some(ControlMessage { msg: Some(control_message::Msg::Flags(_)) })) => {
                    s.tally.flags_pushed += 1;
                    Ok(())
                }
                Ok(Some(_)) => Ok(()),
                Ok(None) => Err(StreamError::Closed),
                Err(status) => Err(status.into()),
            },
        };
        // The request side closes as soon as the control plane answers with a status: read it.
        let ended = match ended {
            Err(StreamError::Closed) => loop {
                match tokio::time::timeout(Duration::from_secs(5), c.inbound.message()).await {
                    Ok(Ok(Some(ControlMessage { msg: Some(control_message::Msg::Ack(ack)) }))) => s.ack(ack.seq),
                    Ok(Ok(Some(_))) => {}
                    Ok(Err(status)) => break Err(status.into()),
                    Ok(Ok(None)) | Err(_) => break Err(StreamError::Closed),
                }
            },
            other => other,
        };
        match ended {
            Ok(()) => {}
            Err(StreamError::Status(status)) if status.code() == tonic::Code::ResourceExhausted => {
                s.tally.shed += 1;
                if s.tally.shed > MAX_SHEDS {
                    break 'run Err(StreamError::TooManySheds);
                }
                let pushback = status
                    .metadata()
                    .get("grpc-retry-pushback-ms")
                    .and_then(|v| v.to_str().ok()?.parse().ok())
                    .map_or(DEFAULT_PUSHBACK, Duration::from_millis);
                away_until = Some(Instant::now() + pushback);
                conn = None;
                s.pending.iter_mut().for_each(|e| e.sent_at = None);
            }
            Err(e) => break Err(e),
        }
    };
    let mut tally = s.tally;
    tally.unacked = s.pending.iter().map(|e| e.intervals).sum();
    if let Err(e) = result {
        tally.error = Some(e.to_string());
    }
    tally
}

/// The pending reports of one simulated sidecar.
struct Sim {
    tally: Tally,
    pending: VecDeque<Entry>,
    next_seq: u64,
    pool: Arc<Pool>,
    max_in_flight: usize,
}

impl Sim {
    /// One interval's report: pending, or merged into the newest unsent one past [`MAX_UNSENT`].
    fn interval(&mut self, window_start: &mut i64) {
        let end = unix_ms();
        self.tally.intervals += 1;
        let unsent = self.pending.iter().filter(|e| !e.ever_sent).count();
        if unsent >= MAX_UNSENT
            && let Some(last) = self.pending.back_mut().filter(|e| !e.ever_sent)
        {
            // A merged report is sent as one draw (same size); the tally counts its intervals.
            last.intervals += 1;
            last.window_end_ms = end;
            self.tally.merged += 1;
        } else {
            self.pending.push_back(Entry {
                seq: self.next_seq,
                intervals: 1,
                window_start_ms: *window_start,
                window_end_ms: end,
                sent_at: None,
                ever_sent: false,
            });
            self.next_seq += 1;
        }
        *window_start = end;
    }

    /// Sends what the in-flight window allows, in order.
    async fn send(&mut self, tx: Option<&mpsc::Sender<Bytes>>, rng: &mut fastrand::Rng) -> Result<(), StreamError> {
        let Some(tx) = tx else { return Ok(()) };
        let mut room = self.max_in_flight.saturating_sub(self.pending.iter().filter(|e| e.sent_at.is_some()).count());
        for e in self.pending.iter_mut().filter(|e| e.sent_at.is_none()) {
            if room == 0 {
                break;
            }
            room -= 1;
            let bytes = self.pool.report(rng, e.seq, e.window_start_ms, e.window_end_ms);
            self.tally.bytes_sent += bytes.len() as u64;
            e.sent_at = Some(Instant::now());
            e.ever_sent = true;
            tx.send(bytes).await.map_err(|_| StreamError::Closed)?;
            self.tally.sent += 1;
        }
        Ok(())
    }

    /// Acks come in order; one acknowledges every report up to its sequence.
    fn ack(&mut self, seq: u64) {
        while self.pending.front().is_some_and(|e| e.seq <= seq) {
            if let Some(e) = self.pending.pop_front() {
                self.tally.intervals_acked += e.intervals;
                if let Some(at) = e.sent_at {
                    self.tally.acked += 1;
                    self.tally.ack_latency.record(at.elapsed().as_micros() as u64);
                }
            }
        }
    }

    /// A new stream's Welcome: what it applied is acknowledged, the rest renumbered to follow.
    fn welcome(&mut self, last_applied: u64) {
        self.ack(last_applied);
        let mut seq = last_applied;
        for e in &mut self.pending {
            seq += 1;
            e.seq = seq;
            e.sent_at = None;
        }
        self.next_seq = seq + 1;
    }
}

/// Sends pre-encoded `ProxyMessage`s, decodes `ControlMessage`s: the load tool's own encoding
/// stays off its profile.
#[derive(Debug, Clone, Copy)]
struct RawCodec;

#[derive(Debug, Clone, Copy)]
struct RawEncoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Codec for RawCodec {
    type Encode = Bytes;
    type Decode = ControlMessage;
    type Encoder = RawEncoder;
    type Decoder = tonic_prost::ProstDecoder<ControlMessage>;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::default()
    }
}

fn unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
