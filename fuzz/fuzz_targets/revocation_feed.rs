//! The filter's revocation feed parser (`GET /revocations` answers): never panics; an
//! accepted answer applies to an empty set (a snapshot always, a delta when it moves
//! the version forward), stays within the bound, and the set survives its shared-data
//! encoding unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshpass_filter::feed::{parse_feed, RevocationSet, MAX_ENTRIES};

fuzz_target!(|data: &[u8]| {
    let Ok(feed) = parse_feed(data) else {
        return;
    };
    let full = feed.full;
    let version = feed.version;
    let first = feed.added.first().map(|r| r.id.clone());
    match RevocationSet::default().apply(feed) {
        Ok(set) => {
            assert!(set.len() <= MAX_ENTRIES);
            assert_eq!(set.version(), version);
            let back = RevocationSet::decode(&set.encode()).expect("own encoding parses");
            assert_eq!((back.version(), back.len()), (set.version(), set.len()));
            assert_eq!(back.encode(), set.encode());
            // Lookups never panic, whatever the input.
            let _ = set.check("spiffe://td/ns/a/sa/b", "a.eyJqdGkiOiJ4In0.c", 0);
            let _ = set.subject(first.as_deref().unwrap_or(""), u64::MAX);
        }
        // Parsing already bounds a snapshot; only a delta to version 0 cannot follow
        // an empty set.
        Err(_) => assert!(!full && version == 0),
    }
});
