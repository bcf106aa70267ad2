//! Criterion benches of per-request flag evaluation: build the context, evaluate every flag of a
//! set of 1, 10 or 100 flags of one shape. `Throughput::Elements(n)` makes criterion report flags/s,
//! so the per-flag cost is time / n.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rampart_benches::{SIZES, Shape, context, evaluate_all};
use rampart_flags::Bump;

/// One group per shape, one bench per size. The arena is reused and reset every iteration, and
/// the context is rebuilt every iteration: both are how the proxy serves a request.
fn evaluate(c: &mut Criterion) {
    for shape in Shape::ALL {
        let mut group = c.benchmark_group(format!("evaluate_all/{}", shape.name()));
        for n in SIZES {
            let set = shape.flag_set(n);
            let mut arena = Bump::new();
            group.throughput(Throughput::Elements(n as u64));
            group.bench_with_input(BenchmarkId::from_parameter(n), &set, |b, set| {
                b.iter(|| {
                    arena.reset();
                    black_box(evaluate_all(black_box(set), &arena))
                });
            });
        }
        group.finish();
    }
}

/// The fixed per-request cost (arena reset + context build) without any flag, to subtract from
/// the small sets.
fn context_only(c: &mut Criterion) {
    let mut arena = Bump::new();
    c.bench_function("context_only", |b| {
        b.iter(|| {
            arena.reset();
            black_box(context(&arena));
        });
    });
}

criterion_group!(benches, evaluate, context_only);
criterion_main!(benches);
