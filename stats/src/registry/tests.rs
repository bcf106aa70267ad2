//! The registry's tests: creation under the cap, draining, and retiring series of ended ramps.

use super::*;
use crate::series::Outcome;

#[test]
fn same_pair_same_series() {
    let registry = Registry::new(4);
    let a = registry.get_or_create("f", "on").unwrap();
    let b = registry.get_or_create("f", "on").unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    assert!(!Arc::ptr_eq(&a, &registry.get_or_create("f", "off").unwrap()));
    assert!(!Arc::ptr_eq(&a, &registry.get_or_create("g", "on").unwrap()));
    assert_eq!(registry.len(), 3);
}

#[test]
fn cap_refuses_new_series_and_overflow_is_counted_and_drained() {
    let registry = Registry::new(2);
    assert!(registry.is_empty());
    let on = registry.get_or_create("f", "on").unwrap();
    registry.get_or_create("f", "off").unwrap();
    assert!(registry.get_or_create("g", "on").is_none());
    assert!(registry.get_or_create("f", "other").is_none());
    // Existing series stay reachable at the cap.
    assert!(Arc::ptr_eq(&on, &registry.get_or_create("f", "on").unwrap()));
    assert_eq!((registry.len(), registry.max_series()), (2, 2));

    for _ in 0..3 {
        registry.overflow().fetch_add(1, Ordering::Relaxed);
    }
    assert_eq!(registry.take_overflow(), 3);
    assert_eq!(registry.take_overflow(), 0);
}

#[test]
fn zero_cap_records_nothing() {
    let registry = Registry::new(0);
    assert!(registry.get_or_create("f", "on").is_none());
    assert!(registry.take_all().is_empty());
}

#[test]
fn take_all_returns_only_non_empty_deltas_sorted() {
    let registry = Registry::new(10);
    let b_on = registry.get_or_create("b", "on").unwrap();
    let a_off = registry.get_or_create("a", "off").unwrap();
    let _idle = registry.get_or_create("a", "on").unwrap();
    b_on.record(Outcome::Error, Some(300));
    a_off.record(Outcome::Ok, Some(40));
    a_off.record(Outcome::Ok, None);

    let taken = registry.take_all();
    let keys: Vec<_> = taken.iter().map(|(f, v, d)| (f.as_str(), v.as_str(), d.requests, d.errors)).collect();
    assert_eq!(keys, [("a", "off", 2, 0), ("b", "on", 1, 1)]);
    assert!(registry.take_all().is_empty(), "a second take finds nothing new");

    a_off.record_split(Outcome::Ok, Some(40), 9, u64::MAX, 0);
    let peeked = registry.peek_all();
    let keys: Vec<_> = peeked.iter().map(|(f, v, d)| (f.as_str(), v.as_str(), d.requests, d.split.units)).collect();
    assert_eq!(keys, [("a", "off", 1, 1), ("a", "on", 0, 0), ("b", "on", 0, 0)], "idle series too");
    assert_eq!(registry.take_all().len(), 1, "peeking drained nothing");
}

fn requests(deltas: &[(String, String, Delta)]) -> Vec<(&str, &str, u64)> {
    deltas.iter().map(|(f, v, d)| (f.as_str(), v.as_str(), d.requests)).collect()
}

#[test]
fn a_retired_series_is_freed_after_its_last_counts_are_taken() {
    let registry = Registry::new(2);
    let on = registry.get_or_create("f", "on").unwrap();
    let off = registry.get_or_create("f", "off").unwrap();
    on.record(Outcome::Ok, Some(10));
    off.record(Outcome::Ok, Some(10));
    assert!(registry.get_or_create("g", "on").is_none(), "at the cap");

    // New flags end `f`'s ramp and start `g`'s, while a request on the old snapshot still
    // holds `on`: `f`'s series retire, and `g`'s take their live slots at once.
    drop(off);
    registry.retain(|_, _| false);
    assert_eq!((registry.len(), registry.retired()), (2, 2));
    let g = registry.get_or_create("g", "on").unwrap();
    registry.get_or_create("g", "off").unwrap();
    assert!(registry.get_or_create("h", "on").is_none(), "live cap");
    on.record(Outcome::Error, Some(10));
    g.record(Outcome::Ok, None);
    assert_eq!(requests(&registry.peek_all()), [("f", "off", 1), ("f", "on", 2), ("g", "off", 0), ("g", "on", 1)]);

    // `off` is alone: its last counts are taken and it is freed; `on` is still held.
    assert_eq!(requests(&registry.take_all()), [("f", "off", 1), ("f", "on", 2), ("g", "on", 1)]);
    assert_eq!((registry.len(), registry.retired()), (3, 1));
    // The request ends after recording once more: nothing it counted is lost.
    on.record(Outcome::Ok, Some(10));
    drop(on);
    assert_eq!(requests(&registry.take_all()), [("f", "on", 1)]);
    assert_eq!((registry.len(), registry.retired()), (2, 0));
    assert_eq!(registry.lock().seen.keys().collect::<Vec<_>>(), ["g"], "`f`'s units table went with it");
}

#[test]
fn retired_series_waiting_for_their_report_are_bounded_too() {
    let registry = Registry::new(2);
    let mut held = Vec::new();
    for ramp in 0..2 {
        registry.retain(|_, _| false);
        for v in ["on", "off"] {
            held.push(registry.get_or_create(&format!("r{ramp}"), v).unwrap());
        }
    }
    registry.retain(|_, _| false);
    // Two ramps' series retired and still held: 2 × max_series in all, nothing more fits.
    assert_eq!((registry.len(), registry.retired()), (4, 4));
    assert!(registry.get_or_create("r2", "on").is_none());
    drop(held);
    assert!(registry.take_all().is_empty());
    assert!(registry.get_or_create("r2", "on").is_some());
}

#[test]
fn retain_keeps_the_pairs_still_tracked() {
    let registry = Registry::new(4);
    let kept = registry.get_or_create("f", "on").unwrap();
    drop(registry.get_or_create("f", "old").unwrap());
    drop(registry.get_or_create("g", "on").unwrap());
    registry.retain(|flag, variant| flag == "f" && variant == "on");
    assert_eq!(registry.retired(), 2);
    assert!(Arc::ptr_eq(&kept, &registry.get_or_create("f", "on").unwrap()));
    assert!(registry.take_all().is_empty());
    assert_eq!((registry.len(), registry.retired()), (1, 0));
    assert_eq!(registry.lock().seen.keys().collect::<Vec<_>>(), ["f"]);
}

#[test]
fn a_pair_tracked_again_before_it_is_freed_is_the_same_series() {
    let registry = Registry::new(1);
    let first = registry.get_or_create("f", "on").unwrap();
    first.record(Outcome::Ok, None);
    registry.retain(|_, _| false);
    let again = registry.get_or_create("f", "on").unwrap();
    assert!(Arc::ptr_eq(&first, &again));
    assert_eq!((registry.len(), registry.retired()), (1, 0));
    drop((first, again));
    assert_eq!(requests(&registry.take_all()), [("f", "on", 1)], "counted once");
    assert_eq!(registry.len(), 1, "live again: not freed");
}

#[test]
fn ramps_started_and_ended_in_turn_never_exhaust_the_cap() {
    let registry = Registry::new(2);
    let mut reported = 0;
    for ramp in 0..1_000 {
        let flag = format!("ramp-{ramp}");
        let series: Vec<_> =
            ["on", "off"].iter().map(|v| registry.get_or_create(&flag, v).expect("a free slot")).collect();
        for s in &series {
            s.record(Outcome::Ok, Some(5));
        }
        registry.retain(|_, _| false);
        // The last requests of the ramp finish after the flags changed.
        series[0].record(Outcome::Ok, Some(5));
        drop(series);
        reported += registry.take_all().iter().map(|(_, _, d)| d.requests).sum::<u64>();
        assert!(registry.is_empty());
    }
    assert_eq!(reported, 3_000);
    assert_eq!(registry.take_overflow(), 0);
    assert!(registry.lock().seen.is_empty());
}

#[test]
fn forget_retired_frees_only_series_no_one_holds() {
    let registry = Registry::new(2);
    let held = registry.get_or_create("f", "on").unwrap();
    drop(registry.get_or_create("f", "off").unwrap());
    registry.retain(|_, _| false);
    registry.forget_retired();
    assert_eq!((registry.len(), registry.retired()), (1, 1));
    drop(held);
    registry.forget_retired();
    assert!(registry.is_empty());
    assert!(registry.lock().seen.is_empty());
}
