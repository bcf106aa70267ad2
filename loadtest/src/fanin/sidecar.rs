//! One simulated sidecar: opens `RampControl/Connect` (Hello → Welcome), then sends a numbered
//! report per interval on its own staggered schedule and times each report from send to `StatsAck`.
//! Like the real reporter it keeps at most `max_in_flight` reports unacknowledged.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rampart_proto::rampart::v1::ramp_control_client::RampControlClient;
use rampart_proto::rampart::v1::{ControlMessage, Hello, ProxyMessage, StatsReport, control_message, proxy_message};
use rampart_stats::SparseHistogram;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;
use tonic::transport::Channel;

use super::synth::Pool;

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
}

/// An open stream: the Hello was answered.
#[derive(Debug)]
pub(crate) struct Open {
    index: usize,
    tx: mpsc::Sender<ProxyMessage>,
    inbound: Streaming<ControlMessage>,
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
    pub(crate) sent: u64,
    pub(crate) acked: u64,
    /// Intervals skipped because `max_in_flight` reports were unacknowledged.
    pub(crate) skipped: u64,
    pub(crate) unacked: u64,
    pub(crate) flags_pushed: u64,
    pub(crate) bytes_sent: u64,
    /// Send → `StatsAck`, in µs.
    pub(crate) ack_latency: SparseHistogram,
    pub(crate) error: Option<String>,
}

/// Says Hello as proxy `loadtest-{run}-{index}` and waits for the Welcome.
pub(crate) async fn open(channel: Channel, run: u64, index: usize) -> Result<Open, StreamError> {
    let (tx, rx) = mpsc::channel(64);
    let hello = Hello {
        proxy_id: format!("loadtest-{run:x}-{index:05}"),
        service: "loadtest".to_owned(),
        flags_version: 0,
        epoch: fastrand::u64(1..),
    };
    // The channel is fresh: room for the Hello is certain.
    tx.try_send(ProxyMessage { msg: Some(proxy_message::Msg::Hello(hello)) }).map_err(|_| StreamError::Closed)?;
    let mut client = RampControlClient::new(channel);
    let handshake = async {
        let mut inbound = client.connect(ReceiverStream::new(rx)).await?.into_inner();
        match inbound.message().await? {
            Some(ControlMessage { msg: Some(control_message::Msg::Welcome(_)) }) => Ok(inbound),
            Some(_) => Err(StreamError::NoWelcome),
            None => Err(StreamError::Closed),
        }
    };
    let inbound =
        tokio::time::timeout(Duration::from_secs(10), handshake).await.map_err(|_| StreamError::Timeout)??;
    Ok(Open { index, tx, inbound })
}

/// Sends reports on `schedule` until its stop, waits for the outstanding acks until its drain
/// deadline (or `shutdown`), then closes the stream.
pub(crate) async fn run(open: Open, schedule: Schedule, pool: Arc<Pool>, shutdown: CancellationToken) -> Tally {
    let Open { index, tx, mut inbound } = open;
    let mut tally = Tally::default();
    let mut rng = fastrand::Rng::with_seed(index as u64);
    let mut tick = tokio::time::interval_at(schedule.first, schedule.interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut in_flight: VecDeque<(u64, Instant)> = VecDeque::with_capacity(schedule.max_in_flight);
    let (mut seq, mut window_start) = (0u64, unix_ms());
    let mut sending = true;
    let result: Result<(), StreamError> = loop {
        if !sending && in_flight.is_empty() {
            break Ok(());
        }
        tokio::select! {
            () = shutdown.cancelled() => break Ok(()),
            () = tokio::time::sleep_until(schedule.drain_until), if !sending => break Ok(()),
            at = tick.tick(), if sending => {
                if at >= schedule.stop {
                    sending = false;
                    continue;
                }
                if in_flight.len() >= schedule.max_in_flight {
                    tally.skipped += 1;
                    continue;
                }
                seq += 1;
                let window_end = unix_ms();
                let report = StatsReport {
                    seq,
                    first_seq: seq,
                    window_start_ms: window_start,
                    window_end_ms: window_end,
                    stats: pool.report(&mut rng),
                    overflow: 0,
                };
                window_start = window_end;
                tally.bytes_sent += prost::Message::encoded_len(&report) as u64;
                in_flight.push_back((seq, Instant::now()));
                if tx.send(ProxyMessage { msg: Some(proxy_message::Msg::Report(report)) }).await.is_err() {
                    break Err(StreamError::Closed);
                }
                tally.sent += 1;
            }
            msg = inbound.message() => match msg {
                Ok(Some(ControlMessage { msg: Some(control_message::Msg::Ack(ack)) })) => {
                    // Acks come in order; one acknowledges every report up to its sequence.
                    while in_flight.front().is_some_and(|&(s, _)| s <= ack.seq) {
                        if let Some((_, sent_at)) = in_flight.pop_front() {
                            tally.acked += 1;
                            tally.ack_latency.record(sent_at.elapsed().as_micros() as u64);
                        }
                    }
                }
                Ok(Some(ControlMessage { msg: Some(control_message::Msg::Flags(_)) })) => tally.flags_pushed += 1,
                Ok(Some(_)) => {}
                Ok(None) => break Err(StreamError::Closed),
                Err(status) => break Err(status.into()),
            },
        }
    };
    tally.unacked = in_flight.len() as u64;
    if let Err(e) = result {
        tally.error = Some(e.to_string());
    }
    tally
}

fn unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
