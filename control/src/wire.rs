//! gRPC message framing for the sidecar stream, held to what a stream needs between reports:
//! nothing. [`Inbound`] reads length-prefixed messages off the request body as zero-copy slices
//! of the received chunks, and buffers only a message that spans chunks, in an allocation of
//! its length that goes with the message. [`Outgoing`] encodes each answer into a buffer
//! of exactly its size. (tonic's own framing keeps a receive buffer of about twice the largest
//! message and an 8 KiB send buffer for each stream's whole life: ≈40 KiB per sidecar, most of
//! the control plane's memory at 10 000 sidecars.)

use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use hyper::body::{Body, Frame};
use hyper::http::HeaderMap;
use prost::Message;
use tokio::sync::mpsc;
use tonic::Status;

/// A gRPC message's prefix: a compression flag and a big-endian length.
const HEADER: usize = 5;
/// The most a message that spans chunks is given before its bytes arrive (it grows as they do),
/// so a prefix that announces a large message costs nothing until the message is sent.
const FIRST_ALLOCATION: usize = 64 * 1024;

/// Splits a request body into gRPC messages.
#[derive(Debug, Default)]
struct Deframer {
    /// Received and not yet parsed: a slice of the last chunk, empty (and holding nothing) once
    /// parsed.
    pending: Bytes,
    /// A prefix that spans chunks, and how much of it has arrived.
    header: [u8; HEADER],
    have: usize,
    /// A message that spans chunks: what has arrived, and its length.
    body: Option<(BytesMut, usize)>,
}

impl Deframer {
    fn feed(&mut self, chunk: Bytes) {
        debug_assert!(self.pending.is_empty(), "a chunk is fed only once the last one is parsed");
        self.pending = chunk;
    }

    /// Whether a message is partly received.
    fn mid_message(&self) -> bool {
        self.have > 0 || self.body.is_some() || !self.pending.is_empty()
    }

    /// The next whole message, or `None` when more must be received.
    fn next(&mut self, limit: usize) -> Result<Option<Bytes>, Status> {
        let found = self.parse(limit);
        if self.pending.is_empty() {
            // An empty slice still holds its chunk's allocation.
            self.pending = Bytes::new();
        }
        found
    }

    fn parse(&mut self, limit: usize) -> Result<Option<Bytes>, Status> {
        loop {
            if let Some((buf, len)) = &mut self.body {
                let take = (*len - buf.len()).min(self.pending.len());
                buf.put(self.pending.split_to(take));
                if buf.len() < *len {
                    return Ok(None);
                }
                let (buf, _) = self.body.take().expect("matched");
                return Ok(Some(buf.freeze()));
            }
            if self.have == 0 && self.pending.len() >= HEADER {
                let len = length(&self.pending[..HEADER], limit)?;
                if self.pending.len() >= HEADER + len {
                    let message = self.pending.slice(HEADER..HEADER + len);
                    self.pending.advance(HEADER + len);
                    return Ok(Some(message));
                }
                self.pending.advance(HEADER);
                self.body = Some((BytesMut::with_capacity(len.min(FIRST_ALLOCATION)), len));
                continue;
            }
            let take = (HEADER - self.have).min(self.pending.len());
            self.header[self.have..self.have + take].copy_from_slice(&self.pending[..take]);
            self.pending.advance(take);
            self.have += take;
            if self.have < HEADER {
                return Ok(None);
            }
            self.have = 0;
            let len = length(&self.header, limit)?;
            self.body = Some((BytesMut::with_capacity(len.min(FIRST_ALLOCATION)), len));
        }
    }
}

/// A message's length from its prefix, refused when compressed (none is accepted) or over `limit`.
fn length(header: &[u8], limit: usize) -> Result<usize, Status> {
    if header[0] != 0 {
        return Err(Status::internal(format!(
            "protocol error: compression flag {} on a stream that accepts no compression",
            header[0]
        )));
    }
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len > limit {
        return Err(Status::out_of_range(format!(
            "Error, decoded message length too large: found {len} bytes, the limit is: {limit} bytes"
        )));
    }
    Ok(len)
}

/// The messages of a request body, decoded as `M`.
pub(crate) struct Inbound<M> {
    body: tonic::body::Body,
    frames: Deframer,
    limit: usize,
    ended: bool,
    decoded: std::marker::PhantomData<fn() -> M>,
}

impl<M: Message + Default> Inbound<M> {
    /// Messages longer than `limit` bytes end the stream with `OUT_OF_RANGE`.
    pub(crate) fn new(body: tonic::body::Body, limit: usize) -> Self {
        Inbound { body, frames: Deframer::default(), limit, ended: false, decoded: std::marker::PhantomData }
    }

    /// The next message; `None` once the sidecar has ended its side of the stream. Cancel-safe:
    /// what has been received stays in `self`.
    pub(crate) async fn message(&mut self) -> Result<Option<M>, Status> {
        poll_fn(|cx| self.poll_message(cx)).await
    }

    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<M>, Status>> {
        loop {
            if let Some(bytes) = self.frames.next(self.limit)? {
                return Poll::Ready(
                    M::decode(bytes)
                        .map(Some)
                        .map_err(|e| Status::internal(format!("failed to decode the message: {e}"))),
                );
            }
            if self.ended {
                return Poll::Ready(Ok(None));
            }
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.frames.feed(data);
                    }
                }
                Some(Err(status)) if status.code() == tonic::Code::Cancelled => self.ended = true,
                Some(Err(status)) => return Poll::Ready(Err(status)),
                None if self.frames.mid_message() => {
                    return Poll::Ready(Err(Status::internal("the stream ended inside a message")));
                }
                None => self.ended = true,
            }
        }
    }
}

/// A message framed for the wire, in a buffer of exactly its size.
pub(crate) fn encode(message: &impl Message) -> Bytes {
    let len = message.encoded_len();
    let mut buf = BytesMut::with_capacity(HEADER + len);
    buf.put_u8(0);
    buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    message.encode_raw(&mut buf);
    buf.freeze()
}

/// A response body of the messages sent on `rx`. The stream ends with the status sent on it, or
/// with `OK` once every sender is gone.
pub(crate) struct Outgoing<M> {
    rx: mpsc::Receiver<Result<M, Status>>,
    done: bool,
}

impl<M> Outgoing<M> {
    pub(crate) fn new(rx: mpsc::Receiver<Result<M, Status>>) -> Self {
        Outgoing { rx, done: false }
    }
}

fn trailers(status: &Status) -> HeaderMap {
    let mut map = HeaderMap::new();
    if status.add_header(&mut map).is_err() {
        // Metadata that cannot be a header: the code and message alone.
        let _ = Status::new(status.code(), status.message()).add_header(&mut map);
    }
    map
}

impl<M: Message + Unpin> Body for Outgoing<M> {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let frame = match ready!(self.rx.poll_recv(cx)) {
            Some(Ok(message)) => return Poll::Ready(Some(Ok(Frame::data(encode(&message))))),
            Some(Err(status)) => Frame::trailers(trailers(&status)),
            None => Frame::trailers(trailers(&Status::ok(""))),
        };
        self.done = true;
        self.rx.close();
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn framed(messages: &[Vec<u8>]) -> Vec<u8> {
        let mut wire = Vec::new();
        for m in messages {
            wire.push(0);
            wire.extend_from_slice(&(m.len() as u32).to_be_bytes());
            wire.extend_from_slice(m);
        }
        wire
    }

    /// Feeds `wire` cut at `cuts` and returns the messages and whether anything is still held.
    fn deframe(wire: &[u8], cuts: &[usize], limit: usize) -> Result<(Vec<Vec<u8>>, bool), Status> {
        let mut d = Deframer::default();
        let mut out = Vec::new();
        let mut at = 0;
        for &end in cuts.iter().chain(std::iter::once(&wire.len())) {
            let end = end.clamp(at, wire.len());
            d.feed(Bytes::copy_from_slice(&wire[at..end]));
            while let Some(m) = d.next(limit)? {
                out.push(m.to_vec());
            }
            at = end;
        }
        Ok((out, d.mid_message()))
    }

    proptest! {
        #[test]
        fn any_cut_gives_back_the_messages(
            messages in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..8),
            mut cuts in prop::collection::vec(0usize..400, 0..12),
        ) {
            cuts.sort_unstable();
            let wire = framed(&messages);
            let (out, held) = deframe(&wire, &cuts, 1 << 20).unwrap();
            prop_assert_eq!(out, messages);
            prop_assert!(!held);
        }
    }

    #[test]
    fn every_single_cut_and_byte_by_byte() {
        let messages = vec![b"hello".to_vec(), Vec::new(), vec![7; 300]];
        let wire = framed(&messages);
        for cut in 0..=wire.len() {
            assert_eq!(deframe(&wire, &[cut], 1024).unwrap().0, messages, "cut at {cut}");
        }
        let every: Vec<usize> = (1..wire.len()).collect();
        assert_eq!(deframe(&wire, &every, 1024).unwrap().0, messages);
    }

    #[test]
    fn a_whole_message_is_a_slice_and_nothing_is_held_after_it() {
        let wire = Bytes::from(framed(&[vec![1; 100]]));
        let mut d = Deframer::default();
        d.feed(wire.clone());
        let m = d.next(1024).unwrap().unwrap();
        assert_eq!(m.as_ptr(), wire[HEADER..].as_ptr(), "zero copy");
        assert!(!d.mid_message());
        assert_eq!(d.pending.len(), 0);
        drop((wire, m));
        assert!(d.next(1024).unwrap().is_none());
    }

    #[test]
    fn a_split_message_is_buffered_at_its_exact_length() {
        let wire = framed(&[vec![3; 1000]]);
        let mut d = Deframer::default();
        d.feed(Bytes::copy_from_slice(&wire[..10]));
        assert!(d.next(4096).unwrap().is_none());
        assert_eq!(d.body.as_ref().map(|(b, _)| b.capacity()), Some(1000));
        d.feed(Bytes::copy_from_slice(&wire[10..]));
        assert_eq!(d.next(4096).unwrap().unwrap(), vec![3; 1000]);
        assert!(!d.mid_message());
    }

    #[test]
    fn oversized_and_compressed_messages_are_refused() {
        let wire = framed(&[vec![0; 100]]);
        let e = deframe(&wire, &[], 99).unwrap_err();
        assert_eq!(e.code(), tonic::Code::OutOfRange);
        // Refused from the prefix, before the body arrives.
        let e = deframe(&wire[..HEADER], &[], 99).unwrap_err();
        assert_eq!(e.code(), tonic::Code::OutOfRange);
        let mut compressed = wire;
        compressed[0] = 1;
        assert_eq!(deframe(&compressed, &[2], 1024).unwrap_err().code(), tonic::Code::Internal);
    }

    #[test]
    fn a_truncated_stream_is_mid_message() {
        let wire = framed(&[vec![9; 50]]);
        for end in 1..wire.len() {
            let (out, held) = deframe(&wire[..end], &[], 1024).unwrap();
            assert!(out.is_empty() && held, "cut at {end}");
        }
    }

    #[test]
    fn encode_frames_like_tonic() {
        let message = rampart_proto::rampart::v1::Welcome { last_applied_seq: 300 };
        let wire = encode(&message);
        assert_eq!(wire.len(), HEADER + message.encoded_len());
        assert_eq!(&wire[..HEADER], &[0, 0, 0, 0, message.encoded_len() as u8]);
        assert_eq!(rampart_proto::rampart::v1::Welcome::decode(&wire[HEADER..]).unwrap(), message);
    }
}
