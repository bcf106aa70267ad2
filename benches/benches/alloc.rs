//! Heap allocations per request: a counting global allocator around the evaluation loop of every
//! shape × size, and around the proxy's `inject_flags`, printed as markdown tables. Exits non-zero
//! when flags without JSONLogic targeting allocate at all: their target is zero per request.

// A `#[global_allocator]` needs `unsafe impl GlobalAlloc`. The workspace forbids `unsafe_code`, and
// `forbid` cannot be lifted by `#[allow]`, so this package's Cargo.toml copies the workspace lints
// with `unsafe_code = "deny"`; this file, and only this file, allows it.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};

use rampart_benches::sidecar::{Fixture, ProxyFlags, REQUEST_HEADERS, request};
use rampart_benches::{SIZES, Shape, evaluate_all};
use rampart_flags::Bump;
use rampart_proxy::inject_flags;
use rampart_proxy::propagate::ASSIGNMENTS_HEADER;

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

/// How the request handed to `inject_flags` is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestMap {
    /// As hyper's parser leaves it: the `HeaderMap` reserved for exactly the received headers.
    AsParsed,
    /// With room reserved for one header per flag beforehand: isolates the map's growth.
    Reserved,
    /// Reserved, plus a client-sent `x-flag-…` header the proxy must strip.
    ReservedSpoofed,
}

impl RequestMap {
    const ALL: [RequestMap; 3] = [RequestMap::AsParsed, RequestMap::Reserved, RequestMap::ReservedSpoofed];

    fn name(self) -> &'static str {
        match self {
            RequestMap::AsParsed => "as parsed",
            RequestMap::Reserved => "pre-reserved",
            RequestMap::ReservedSpoofed => "pre-reserved + spoofed x-flag header",
        }
    }

    fn request(self, flags: usize) -> http::Request<()> {
        match self {
            RequestMap::AsParsed => request(0, false),
            RequestMap::Reserved => request(flags, false),
            RequestMap::ReservedSpoofed => request(flags, true),
        }
    }
}

/// Allocations inside `inject_flags` alone over `MEASURED` requests, each request built (and
/// dropped) outside the counted region.
fn measure_inject(flags: ProxyFlags, layout: RequestMap) -> Measured {
    // The upstream is never contacted: only the snapshot and the context mapping are used.
    let fixture = Fixture::new(flags, std::net::SocketAddr::from(([127, 0, 0, 1], 9)));
    let proxy = fixture.proxy();
    let snapshot = proxy.snapshot();
    let config = proxy.config();
    measure_requests(
        || layout.request(flags.len()),
        |req| {
            black_box(inject_flags(&snapshot, &config.context, &config.header_prefix, black_box(req)));
        },
    )
}

/// Allocations inside `inject` over `MEASURED` requests (after `WARM_UP`), each request built by
/// `build` outside the counted region; `first` is the very first request's count.
fn measure_requests(build: impl Fn() -> http::Request<()>, inject: impl Fn(&mut http::Request<()>)) -> Measured {
    let run = |n: u64| {
        let (mut allocs, mut bytes) = (0, 0);
        for _ in 0..n {
            let mut req = build();
            let before = counted();
            inject(&mut req);
            let after = counted();
            allocs += after.0 - before.0;
            bytes += after.1 - before.1;
            black_box(&req);
        }
        (allocs, bytes)
    };
    let first = run(1).0;
    run(WARM_UP);
    let (allocs, bytes) = run(MEASURED);
    Measured { first, allocs, bytes }
}

/// The `inject_flags` table; returns the failures (untargeted flags allocating on a pre-reserved map).
fn inject_table() -> Vec<String> {
    let mut failed = Vec::new();
    println!("\n`inject_flags` alone (strip client flag headers, build the context from `x-user-id` and");
    println!("`x-user-email`, evaluate, insert one header per flag), {MEASURED} requests after {WARM_UP}");
    println!("warm-up; each request has {} headers and is built outside the counted region.\n", REQUEST_HEADERS.len());
    println!("| flags | request map | allocs/request | bytes/request | first request |");
    println!("|---|---|---:|---:|---:|");
    for flags in ProxyFlags::ALL {
        for layout in RequestMap::ALL {
            let m = measure_inject(flags, layout);
            let per_req = m.allocs as f64 / MEASURED as f64;
            let bytes = m.bytes as f64 / MEASURED as f64;
            let name = format!("{} × {}", flags.kind(), flags.len());
            println!("| {name} | {} | {per_req:.3} | {bytes:.1} | {} |", layout.name(), m.first);
            // Half the untargeted flags are ramps, whose assignments are kept for the stats until
            // the response: up to 16 inline, more spill to one heap buffer (see `Tracked`).
            let tracked = if flags.uses_jsonlogic() { 0 } else { flags.len() / 2 };
            if !flags.uses_jsonlogic() && layout == RequestMap::Reserved && tracked <= 16 && m.allocs > 0 {
                failed.push(format!("inject_flags {name} ({})", layout.name()));
            }
        }
    }
    failed
}

/// How `[propagation]` is set up for the propagation table, and what the request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hop {
    /// No `[propagation]`: the baseline.
    Off,
    /// Trusts incoming assignments, emits none; the request has no header.
    TrustOnly,
    /// Trusts and emits; the request has no header (the first hop).
    Emit,
    /// Trusts and emits; the request carries a valid header naming every flag (a later hop).
    EmitWithHeader,
}

impl Hop {
    const ALL: [Hop; 4] = [Hop::Off, Hop::TrustOnly, Hop::Emit, Hop::EmitWithHeader];

    fn name(self) -> &'static str {
        match self {
            Hop::Off => "off (baseline)",
            Hop::TrustOnly => "trust, no emit; no header",
            Hop::Emit => "trust + emit; no header",
            Hop::EmitWithHeader => "trust + emit; valid header for every flag",
        }
    }
}

/// Allocations inside `inject_flags` with `[propagation]` set, as for [`measure_inject`].
fn measure_propagation(flags: ProxyFlags, hop: Hop) -> Measured {
    let key = "key = \"a shared secret of at least 32 bytes\"\n";
    let emit = if hop == Hop::TrustOnly { "emit = false\n" } else { "" };
    let at = std::net::SocketAddr::from(([127, 0, 0, 1], 9));
    let config = if hop == Hop::Off { String::new() } else { format!("[propagation]\n{key}{emit}") };
    let fixture = Fixture::with_config(flags, at, &config);
    let proxy = fixture.proxy();
    let snapshot = proxy.snapshot();
    let config = proxy.config();
    let inject = |req: &mut http::Request<()>| {
        black_box(inject_flags(&snapshot, &config.context, &config.header_prefix, black_box(req)));
    };
    // A header as the previous hop sends it: this sidecar's own output.
    let mut first = request(flags.len() + 1, false);
    inject(&mut first);
    let upstream_hop = first.headers().get(ASSIGNMENTS_HEADER).cloned();
    let build = || {
        let mut req = request(flags.len() + 1, false);
        if let (Hop::EmitWithHeader, Some(v)) = (hop, &upstream_hop) {
            req.headers_mut().insert(ASSIGNMENTS_HEADER, v.clone());
        }
        req
    };
    measure_requests(build, inject)
}

/// The propagation table; returns the failures (a request without a header that allocates more
/// than the baseline while nothing is emitted).
fn propagation_table() -> Vec<String> {
    let mut failed = Vec::new();
    println!("\n`inject_flags` with `[propagation]` (signed assignments across hops), pre-reserved map,");
    println!("{MEASURED} requests after {WARM_UP} warm-up.\n");
    println!("| flags | propagation | allocs/request | bytes/request | first request |");
    println!("|---|---|---:|---:|---:|");
    for flags in [ProxyFlags::Untargeted(10), ProxyFlags::Untargeted(100)] {
        let mut baseline = 0;
        for hop in Hop::ALL {
            let m = measure_propagation(flags, hop);
            if hop == Hop::Off {
                baseline = m.allocs;
            }
            let per_req = m.allocs as f64 / MEASURED as f64;
            let bytes = m.bytes as f64 / MEASURED as f64;
            let name = format!("{} × {}", flags.kind(), flags.len());
            println!("| {name} | {} | {per_req:.3} | {bytes:.1} | {} |", hop.name(), m.first);
            if hop == Hop::TrustOnly && m.allocs > baseline {
                failed.push(format!("inject_flags {name} ({})", hop.name()));
            }
        }
    }
    failed
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
    failed.extend(inject_table());
    failed.extend(propagation_table());
    if failed.is_empty() {
        println!(
            "\nOK: flags without JSONLogic targeting allocate nothing (evaluation; inject_flags on a pre-reserved map, up to 16 tracked flags)."
        );
        ExitCode::SUCCESS
    } else {
        eprintln!("\nFAIL: flags without JSONLogic targeting allocated: {}", failed.join(", "));
        ExitCode::FAILURE
    }
}
