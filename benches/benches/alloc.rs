//! Heap allocations per request: a counting global allocator around the evaluation loop of every
//! shape × size, printed as a markdown table. Exits non-zero when a shape without JSONLogic
//! targeting (static, ramp) allocates at all: their target is zero allocations per request.

// A `#[global_allocator]` needs `unsafe impl GlobalAlloc`. The workspace forbids `unsafe_code`, and
// `forbid` cannot be lifted by `#[allow]`, so this package's Cargo.toml copies the workspace lints
// with `unsafe_code = "deny"`; this file, and only this file, allows it.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};

use rampart_benches::{SIZES, Shape, evaluate_all};
use rampart_flags::Bump;

/// Requests run before counting: lets the arena grow to its steady-state chunk and any lazy
/// statics (the JSONLogic engine) initialise.
const WARM_UP: u64 = 1_000;
/// Requests counted per shape × size.
const MEASURED: u64 = 10_000;

/// Calls to `alloc`, `alloc_zeroed` and `realloc` (a `realloc` may move, so it counts).
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

/// `System`, counting every allocation.
#[derive(Debug)]
struct Counting;

fn count(size: usize) {
    ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    BYTES.fetch_add(size as u64, Ordering::Relaxed);
}

// SAFETY: every method forwards its arguments unchanged to `System`, which upholds the contract.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which `System` shares.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: `ptr` was allocated by this allocator, i.e. by `System`, with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by this allocator, i.e. by `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations and bytes since start.
fn counted() -> (u64, u64) {
    (ALLOCATIONS.load(Ordering::Relaxed), BYTES.load(Ordering::Relaxed))
}

/// Allocations over `MEASURED` requests against a warm, reused arena.
#[derive(Debug)]
struct Measured {
    /// Allocations of the first request, on a fresh arena (a worker's first request).
    first: u64,
    allocs: u64,
    bytes: u64,
}

fn measure(shape: Shape, n: usize) -> Measured {
    let set = shape.flag_set(n);
    let mut arena = Bump::new();
    let before = counted();
    black_box(evaluate_all(black_box(&set), &arena));
    let first = counted().0 - before.0;
    for _ in 0..WARM_UP {
        arena.reset();
        black_box(evaluate_all(black_box(&set), &arena));
    }
    let before = counted();
    for _ in 0..MEASURED {
        arena.reset();
        black_box(evaluate_all(black_box(&set), &arena));
    }
    let after = counted();
    Measured { first, allocs: after.0 - before.0, bytes: after.1 - before.1 }
}

/// Whether the counting allocator is really installed: a zero count must mean "no allocation".
fn counter_works() -> bool {
    let before = counted().0;
    drop(black_box(Box::new(black_box(1u64))));
    counted().0 > before
}

fn main() -> ExitCode {
    if !counter_works() {
        eprintln!("FAIL: the counting allocator did not see a Box allocation");
        return ExitCode::FAILURE;
    }
    let mut failed = Vec::new();
    println!("Heap allocations per request (context build + evaluation of every flag), {MEASURED} requests");
    println!("after {WARM_UP} warm-up requests, one arena reset per request. `first request`: allocations");
    println!("of the very first request on a fresh arena (arena chunks, lazy statics), not checked.\n");
    println!("| shape | flags | allocs/eval-of-all-flags | allocs/flag | bytes/eval-of-all-flags | first request |");
    println!("|---|---:|---:|---:|---:|---:|");
    for shape in Shape::ALL {
        for n in SIZES {
            let m = measure(shape, n);
            let per_eval = m.allocs as f64 / MEASURED as f64;
            let per_flag = per_eval / n as f64;
            let bytes_per_eval = m.bytes as f64 / MEASURED as f64;
            let name = shape.name();
            println!("| {name} | {n} | {per_eval:.3} | {per_flag:.4} | {bytes_per_eval:.1} | {} |", m.first);
            if !shape.uses_jsonlogic() && m.allocs > 0 {
                failed.push(format!("{} × {n}", shape.name()));
            }
        }
    }
    if failed.is_empty() {
        println!("\nOK: shapes without JSONLogic targeting allocate nothing.");
        ExitCode::SUCCESS
    } else {
        eprintln!("\nFAIL: shapes without JSONLogic targeting allocated: {}", failed.join(", "));
        ExitCode::FAILURE
    }
}
