//! flagd's `flagd.sync.v1.FlagSyncService` on the query port, for OpenFeature providers in
//! in-process mode: `SyncFlags` streams the sidecar's current flags as a flagd document (ramps
//! expressed as `fractional`, [`rampart_flags::FlagSet::to_flagd`]) at once and again on every
//! change; `FetchAllFlags` answers it once; `GetMetadata` gives the flag set's metadata. A
//! `selector` (`flagSetId=<id>`, in the request or its `Flagd-Selector` header) limits the
//! document to one flag set.

use std::pin::Pin;
use std::sync::Arc;

use rampart_flags::Selector;
use rampart_proto::flagd::sync::v1 as pb;
use rampart_proto::flagd::sync::v1::flag_sync_service_server::{FlagSyncService, FlagSyncServiceServer};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::Engine;
use super::convert::json_to_struct;
use crate::snapshot::Snapshot;

/// Path prefix of the service's methods.
pub(super) const PREFIX: &str = "/flagd.sync.v1.FlagSyncService/";

pub(super) fn server(engine: Arc<Engine>) -> FlagSyncServiceServer<Sync> {
    FlagSyncServiceServer::new(Sync { engine }).max_decoding_message_size(super::MAX_MESSAGE)
}

/// The tonic service.
#[derive(Debug)]
pub(super) struct Sync {
    engine: Arc<Engine>,
}

/// The flagd document of `snapshot` for `selector`, as the wire carries it.
fn configuration(snapshot: &Snapshot, selector: &str) -> String {
    snapshot.flags.to_flagd(Selector::parse(selector)).to_string()
}

fn response(snapshot: &Snapshot, selector: &str) -> pb::SyncFlagsResponse {
    pb::SyncFlagsResponse {
        flag_configuration: configuration(snapshot, selector),
        sync_context: Some(json_to_struct(snapshot.flags.metadata())),
    }
}

/// The request's `selector`, else its `Flagd-Selector` header (newer providers send it there).
fn selector<T>(req: &tonic::Request<T>, field: &str) -> String {
    if !field.is_empty() {
        return field.to_owned();
    }
    req.metadata().get("flagd-selector").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
}

type Flags = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::SyncFlagsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl FlagSyncService for Sync {
    type SyncFlagsStream = Flags;

    /// The current flags at once, then the whole document again after every change (a change
    /// outside the selected flag set sends nothing). Stops when the client goes or on shutdown.
    async fn sync_flags(&self, req: tonic::Request<pb::SyncFlagsRequest>) -> Result<tonic::Response<Flags>, Status> {
        let selector = selector(&req, &req.get_ref().selector);
        let (tx, rx) = mpsc::channel(4);
        let mut changes = self.engine.events.subscribe();
        let engine = self.engine.clone();
        self.engine.tasks.spawn(async move {
            let mut last = response(&engine.current.load(), &selector);
            if tx.send(Ok(last.clone())).await.is_err() {
                return;
            }
            loop {
                tokio::select! {
                    () = engine.shutdown.cancelled() => return,
                    () = tx.closed() => return,
                    change = changes.recv() => match change {
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                }
                let next = response(&engine.current.load(), &selector);
                if next == last {
                    continue;
                }
                if tx.send(Ok(next.clone())).await.is_err() {
                    return;
                }
                last = next;
            }
        });
        Ok(tonic::Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn fetch_all_flags(
        &self,
        req: tonic::Request<pb::FetchAllFlagsRequest>,
    ) -> Result<tonic::Response<pb::FetchAllFlagsResponse>, Status> {
        let selector = selector(&req, &req.get_ref().selector);
        let flag_configuration = configuration(&self.engine.current.load(), &selector);
        Ok(tonic::Response::new(pb::FetchAllFlagsResponse { flag_configuration }))
    }

    #[allow(deprecated)]
    async fn get_metadata(
        &self,
        _req: tonic::Request<pb::GetMetadataRequest>,
    ) -> Result<tonic::Response<pb::GetMetadataResponse>, Status> {
        let metadata = Some(json_to_struct(self.engine.current.load().flags.metadata()));
        Ok(tonic::Response::new(pb::GetMetadataResponse { metadata }))
    }
}
