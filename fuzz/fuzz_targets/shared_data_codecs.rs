//! What the filter reads back from proxy-wasm shared data, where another worker (or an
//! older build of the filter) wrote it: cache entries, exchange markers and the stored
//! revocation set. Never panics; whatever decodes encodes to bytes that decode to the
//! same value (so workers agree on it), and the set stays within its bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshpass_filter::cache::{Entry, Marker, ID_HEX, MARKER_IDLE};
use meshpass_filter::feed::{RevocationSet, MAX_ENTRIES};

fuzz_target!(|data: &[u8]| {
    if let Some(e) = Entry::decode(data) {
        assert!(!e.token.is_empty());
        let bytes = e.encode();
        assert_eq!(Entry::decode(&bytes).as_ref(), Some(&e));
        // The entry is found by the key it names (ids are the key's first 128 bits).
        if e.id.len() <= ID_HEX {
            let key = format!("meshpass/c/{}", e.id);
            assert_eq!(Entry::decode_for(data, &key).as_ref(), Some(&e));
        }
    }

    let m = Marker::decode(data);
    let bytes = m.encode();
    assert_eq!(Marker::decode(&bytes), m);
    if m == Marker::Idle {
        assert_eq!(bytes, MARKER_IDLE);
    }

    if let Ok(set) = RevocationSet::decode(data) {
        assert!(set.len() <= MAX_ENTRIES);
        let bytes = set.encode();
        let back = RevocationSet::decode(&bytes).expect("own encoding decodes");
        assert_eq!((back.version(), back.len()), (set.version(), set.len()));
        assert_eq!(back.encode(), bytes);
        // Lookups never panic, whatever was stored.
        let _ = set.check("spiffe://td/ns/a/sa/b", "a.eyJqdGkiOiJ4In0.c", 0);
        let _ = set.subject("spiffe://td/ns/a/sa/b", u64::MAX);
    }
});
