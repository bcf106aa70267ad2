//! The flag/header step of the request path: strip client-sent flag headers, evaluate every flag
//! in scope against the request's context, insert the precomputed header of each chosen variant.
//! Allocation-free once warm: the context lives in a per-thread arena, headers are clones of
//! reference-counted values built with the snapshot.

use std::cell::RefCell;

use http::{HeaderMap, Request};
use rampart_flags::Bump;

use crate::config::Attribute;
use crate::extract;
use crate::snapshot::Snapshot;

thread_local! {
    /// Scratch arena for evaluation contexts, reset per request.
    static ARENA: RefCell<Bump> = RefCell::new(Bump::with_capacity(4096));
}

/// Strips headers under `prefix` from `req`, then evaluates and injects `snapshot`'s flags.
pub fn inject_flags<B>(snapshot: &Snapshot, context: &[Attribute], prefix: &str, req: &mut Request<B>) {
    strip_prefixed(req.headers_mut(), prefix);
    if snapshot.injected.is_empty() {
        return;
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
        let ctx = extract::context(context, req, arena);
        let flags = snapshot.flags.flags();
        let chosen = arena.alloc_slice_fill_iter(
            snapshot.injected.iter().map(|inj| flags[inj.flag].evaluate(&ctx, arena).variant.map(|v| v.index())),
        );
        let headers = req.headers_mut();
        headers.reserve(snapshot.injected.len());
        for (inj, choice) in snapshot.injected.iter().zip(chosen.iter()) {
            match choice.and_then(|i| inj.variants.get(i)) {
                Some((value, evaluations)) => {
                    headers.insert(inj.header.clone(), value.clone());
                    evaluations.increment(1);
                }
                None => inj.unresolved.increment(1),
            }
        }
    });
}

/// Removes every header under the flag prefix: a client must not choose its own variant.
pub(crate) fn strip_prefixed(headers: &mut HeaderMap, prefix: &str) {
    while let Some(name) = headers.keys().find(|k| k.as_str().starts_with(prefix)).cloned() {
        headers.remove(&name);
    }
}
