#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use meshpass_core::revocation_feed::{MAX_BYTES, MAX_ENTRIES};

fn entry(i: usize, matches: String, reason: &str) -> Revocation {
    Revocation {
        id: format!("rv-{}", uuid::Uuid::new_v4()),
        target: if i % 2 == 0 {
            RevocationTarget::Subject
        } else {
            RevocationTarget::Jti
        },
        matches,
        reason: reason.to_string(),
        until: (i % 3 == 0).then_some(u64::MAX),
        created_at: 1,
        created_by: "spiffe://cluster.local/ns/ops/sa/admin".into(),
    }
}

#[test]
fn the_stored_shares_add_up_to_no_less_than_the_snapshot_a_filter_reads() {
    let added: Vec<_> = (0..50)
        .map(|i| {
            let m = format!("spiffe://cluster.local/ns/n{i}/sa/{}", "a".repeat(i * 7));
            entry(i, m, "quote \" backslash \\ and é ünïcode")
        })
        .chain([entry(1, "jti-\"\\-ü".into(), "r")])
        .collect();
    let shares: usize = added.iter().map(|r| feed_bytes(r).unwrap()).sum();
    let snapshot = RevocationChanges {
        version: u64::MAX,
        full: true,
        added,
        removed: Vec::new(),
    };
    let len = snapshot.to_feed_json().unwrap().len();
    assert!(len <= SNAPSHOT_OVERHEAD_BYTES + shares, "{len} > {shares}");
    // Not wildly over either: the bound is the filters', not a guess.
    assert!(SNAPSHOT_OVERHEAD_BYTES + shares - len < 128);
    let empty = RevocationChanges {
        version: u64::MAX,
        full: true,
        added: Vec::new(),
        removed: Vec::new(),
    };
    assert!(empty.to_feed_json().unwrap().len() <= SNAPSHOT_OVERHEAD_BYTES);
}

#[test]
fn a_set_past_the_filters_entry_or_byte_bound_is_refused() {
    assert!(check_feed_bounds(MAX_ENTRIES, 100 * MAX_ENTRIES).is_ok());
    let e = check_feed_bounds(MAX_ENTRIES + 1, 100).unwrap_err();
    assert!(
        matches!(e, StoreError::Conflict(ref m) if m.contains("20000")),
        "{e}"
    );
    let room = MAX_BYTES - REMOVED_ROOM_BYTES - SNAPSHOT_OVERHEAD_BYTES;
    assert!(check_feed_bounds(10, room).is_ok());
    let e = check_feed_bounds(10, room + 1).unwrap_err();
    assert!(
        matches!(e, StoreError::Conflict(ref m) if m.contains("bytes")),
        "{e}"
    );
}

#[test]
fn a_delta_listing_every_id_the_log_keeps_as_removed_fits_the_room_left_for_it() {
    let removed: Vec<String> = (0..LOG_RETENTION)
        .map(|_| format!("rv-{}", uuid::Uuid::new_v4()))
        .collect();
    let delta = RevocationChanges {
        version: 1,
        full: false,
        added: Vec::new(),
        removed,
    };
    assert!(delta.to_feed_json().unwrap().len() <= REMOVED_ROOM_BYTES + SNAPSHOT_OVERHEAD_BYTES);
}
