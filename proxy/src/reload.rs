//! Hot reload of the flags file: notify watches its directory (editors replace files by rename),
//! changes are debounced, and a valid file becomes one new snapshot stored with one `ArcSwap`
//! store. An invalid file keeps the previous snapshot, logs the located error and is counted.
//! Reading and compiling run on the blocking pool, one reload at a time, within the bounds of
//! `rampart_flags::bounds` (a regular file of at most 16 MiB, nesting, flags and values).
//! Files load as flagd loads them: a flag whose rules cannot compile is kept out of service (it
//! answers `PARSE_ERROR`) with its located error logged and counted; the other flags serve.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use rampart_flags::FlagSet;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use rampart_stats::Registry;

use crate::config::Propagation;
use crate::metrics::Metrics;
use crate::propagate::Prepared;
use crate::query::Events;
use crate::snapshot::{Current, Outputs, Snapshot};

/// Quiet time after the last file event before reloading: one save is often several events.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// Builds snapshots: from the flags file, or from definitions pushed by the control plane.
#[derive(Debug, Clone)]
pub(crate) struct Loader {
    pub(crate) path: Option<PathBuf>,
    pub(crate) prefix: String,
    pub(crate) inject: Option<Vec<String>>,
    pub(crate) metrics: Metrics,
    pub(crate) stats: Arc<Registry>,
    /// Whether a reporter drains `stats` (a control plane is configured): the series of ended
    /// ramps are then freed once their last counts are taken; otherwise once no snapshot or
    /// request holds them.
    pub(crate) reported: bool,
    /// Told of every snapshot stored, for the flag query `EventStream`s.
    pub(crate) events: Events,
    /// The configured routes, whose flag conditions each snapshot resolves.
    pub(crate) routes: Vec<crate::config::Route>,
    pub(crate) propagation: Option<Propagation>,
}

/// Why the flags could not be (re)loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Flags(#[from] rampart_flags::LoadError),
    #[error("{source_name}: {source}")]
    Snapshot {
        source_name: String,
        #[source]
        source: crate::snapshot::SnapshotError,
    },
    #[error("no flags: neither a flags file nor a cached control-plane snapshot")]
    NoFlags,
    #[error("listener TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

impl Loader {
    /// The snapshot of `flags`, named `source_name` in errors.
    pub(crate) fn build(&self, version: u64, flags: FlagSet, source_name: &str) -> Result<Snapshot, LoadError> {
        for problem in flags.quarantined() {
            tracing::error!("{source_name}: {problem}; the flag is out of service (it answers PARSE_ERROR)");
        }
        let out_of_service = flags.flags().iter().filter(|f| !f.in_service()).count();
        self.metrics.flags_out_of_service.set(out_of_service as f64);
        let outputs = Outputs {
            prefix: &self.prefix,
            inject: self.inject.as_deref(),
            metrics: &self.metrics,
            stats: &self.stats,
        };
        Snapshot::build(version, flags, outputs)
            .map(|mut s| {
                crate::route::prepare(&self.routes, &mut s);
                s
            })
            .map(|mut s| {
                s.propagation =
                    self.propagation.as_ref().map(|p| Prepared::build(p, &s.flags, &s.injected, &self.metrics));
                s
            })
            .map_err(|source| LoadError::Snapshot { source_name: source_name.to_owned(), source })
    }

    /// Makes `snapshot` the live one (one store), announces what changed, and drops the metrics
    /// series of flags it no longer has. Without a reporter, the stats series the build retired
    /// are freed here once unheld (the old snapshot is dropped first).
    pub(crate) fn publish(&self, current: &Current, snapshot: Snapshot) {
        let new = Arc::new(snapshot);
        let old = current.swap(new.clone());
        self.events.publish(&old, &new);
        drop(old);
        self.metrics.retain_flags(new.flags.flags().iter().map(|f| f.key()));
        if !self.reported {
            self.stats.forget_retired();
        }
    }

    /// The snapshot of the flags file.
    pub(crate) fn load(&self, version: u64) -> Result<Snapshot, LoadError> {
        let path = self.path.as_ref().ok_or(LoadError::NoFlags)?;
        self.build(version, FlagSet::from_file_tolerant(path)?, &path.display().to_string())
    }

    /// Reloads the file into `current`; on failure the current snapshot stays and the failure is
    /// counted.
    pub(crate) fn reload(&self, current: &Current) -> Result<u64, LoadError> {
        let version = current.load().version + 1;
        match self.load(version) {
            Ok(snapshot) => {
                self.publish(current, snapshot);
                self.metrics.reloads.increment(1);
                self.metrics.flags_version.set(version as f64);
                tracing::info!(version, "flags file reloaded");
                Ok(version)
            }
            Err(e) => {
                self.metrics.reload_failures.increment(1);
                tracing::error!("flags reload failed, previous flags stay live: {e}");
                Err(e)
            }
        }
    }
}

/// Watches the flags file and reloads on change until `shutdown`.
pub(crate) async fn watch(
    loader: Loader,
    path: PathBuf,
    current: Current,
    shutdown: CancellationToken,
) -> notify::Result<()> {
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let file_name = path.file_name().map(|n| n.to_owned());
    let mut watcher = RecommendedWatcher::new(
        move |event: notify::Result<notify::Event>| {
            // Errors and path-less events (overflow) may hide a change: reload to be sure.
            let ours = event.as_ref().map_or(true, |ev| {
                !ev.kind.is_access()
                    && (ev.paths.is_empty() || ev.paths.iter().any(|p| p.file_name() == file_name.as_deref()))
            });
            if ours {
                // A full channel already has a reload pending.
                let _ = tx.try_send(());
            }
        },
        notify::Config::default(),
    )?;
    watcher.watch(dir_of(&path), RecursiveMode::NonRecursive)?;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            got = rx.recv() => if got.is_none() { return Ok(()) },
        }
        // Debounce: wait until events stop arriving.
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(DEBOUNCE) => break,
                got = rx.recv() => if got.is_none() { return Ok(()) },
            }
        }
        // On the blocking pool, so a slow file never holds the runtime serving requests; one
        // reload at a time. The error is logged and counted inside; the watch goes on.
        let (l, c) = (loader.clone(), current.clone());
        if let Err(e) = tokio::task::spawn_blocking(move || l.reload(&c)).await {
            tracing::error!(error = %e, "flags reload task failed");
        }
    }
}

fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}
