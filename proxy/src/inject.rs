//! The flag/header step of the request path: strip client-sent flag headers, evaluate every flag
//! in scope against the request's context, insert the precomputed header of each chosen variant.
//! Evaluation allocates nothing once warm (the context lives in a per-thread arena; headers are
//! clones of values built with the snapshot); growing hyper's header map to fit the new headers
//! is the one allocation left (see `benches/` for the counts).

use std::cell::RefCell;
use std::num::NonZeroU64;

use http::{HeaderMap, Request};
use rampart_flags::{Bump, Reason};
use smallvec::SmallVec;

use crate::config::Attribute;
use crate::extract;
use crate::propagate;
use crate::snapshot::Snapshot;

thread_local! {
    /// Scratch arena for evaluation contexts, reset per request.
    static ARENA: RefCell<Bump> = RefCell::new(Bump::with_capacity(4096));
}

/// One flag's assignment for this request, as the rest of the request path needs it. 16 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assigned {
    /// Index into the snapshot's injected flags.
    pub flag: u32,
    /// Index of the variant in the flag's variants.
    pub variant: u32,
    /// Set only when this sidecar evaluated the flag and the ramp's split chose the variant
    /// (reason `SPLIT`): the unit's hash (`Resolution::unit`), recorded as randomised traffic.
    /// `None` for targeting, the default, and variants given by a propagated assignment or an
    /// override token. A hash of 0 is kept as `u64::MAX` (a collision chance of 2^-64).
    pub unit: Option<NonZeroU64>,
}

/// The assignments the rest of the request path needs: every flag that is tracked
/// (`Injected::tracked`: recorded once the response is known) or that a route matches on
/// (`Injected::routed`: routing compares the integers, see `route.rs`). Whoever fills it
/// (evaluation here, or assignments reused from a propagated header) must push an entry for every
/// tracked *or* routed flag that got a variant; consumers filter by those two bits. Inline up to
/// 16 entries; more spill to the heap.
pub type Tracked = SmallVec<[Assigned; 16]>;

/// Strips headers under `prefix` from `req`, then evaluates and injects `snapshot`'s flags.
/// Returns the assignments of tracked and routed flags (see [`Tracked`]).
pub fn inject_flags<B>(snapshot: &Snapshot, context: &[Attribute], prefix: &str, req: &mut Request<B>) -> Tracked {
    strip_prefixed(req.headers_mut(), prefix);
    let propagation = snapshot.propagation.as_ref();
    if propagation.is_none() {
        propagate::strip_unconfigured(req.headers_mut());
    }
    let mut tracked = Tracked::new();
    if snapshot.injected.is_empty() && propagation.is_none() {
        return tracked;
    }
    ARENA.with(|cell| {
        // Re-entrancy is impossible (evaluation never calls back here); a fresh arena covers it anyway.
        let mut fallback = None;
        let mut guard = cell.try_borrow_mut().ok();
        let arena: &mut Bump = match guard.as_deref_mut() {
            Some(a) => a,
            None => fallback.insert(Bump::new()),
        };
        arena.reset();
        let arena = &*arena;
        // Variants from a verified upstream hop or override token are used, not evaluated.
        let received = propagation.map(|p| p.receive(req.headers_mut(), arena)).unwrap_or_default();
        let ctx = extract::context(context, req, arena);
        let flags = snapshot.flags.flags();
        // By injected index: the unit of a randomised assignment (see `Assigned::unit`).
        let units = arena.alloc_slice_fill_copy(snapshot.injected.len(), None::<NonZeroU64>);
        let chosen = arena.alloc_slice_fill_iter(snapshot.injected.iter().enumerate().map(|(i, inj)| {
            if let Some(given) = received.given(i) {
                return Some(given);
            }
            let r = flags[inj.flag].evaluate(&ctx, arena);
            if r.reason == Reason::Split {
                units[i] = r.unit.map(|h| NonZeroU64::new(h).unwrap_or(NonZeroU64::MAX));
            }
            r.variant.map(|v| v.index())
        }));
        let headers = req.headers_mut();
        // One more for `x-forwarded-for`, added later. hyper sizes a parsed map to the headers it
        // received, so this usually grows it: one allocation per request, outside our control.
        headers.reserve(snapshot.injected.len() + 1);
        for (i, (inj, choice)) in snapshot.injected.iter().zip(chosen.iter()).enumerate() {
            match choice.and_then(|v| inj.variants.get(v).map(|out| (v, out))) {
                Some((v, out)) => {
                    headers.insert(inj.header.clone(), out.header.clone());
                    if received.given(i).is_none() {
                        out.evaluations.increment(1);
                    }
                    if inj.tracked || inj.routed {
                        // Both fit: a snapshot has far fewer than 2^32 flags or variants.
                        tracked.push(Assigned { flag: i as u32, variant: v as u32, unit: units[i] });
                    }
                }
                None => inj.unresolved.increment(1),
            }
        }
        if let Some(p) = propagation {
            p.emit(headers, chosen, &received);
        }
    });
    tracked
}

/// Removes every header under the flag prefix: a client must not choose its own variant.
pub(crate) fn strip_prefixed(headers: &mut HeaderMap, prefix: &str) {
    while let Some(name) = headers.keys().find(|k| k.as_str().starts_with(prefix)).cloned() {
        headers.remove(&name);
    }
}
