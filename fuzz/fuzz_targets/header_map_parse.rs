//! The proxy-wasm header-map layout the filter reads in place: never panics, and
//! whatever parses encodes back to the same bytes with the same pairs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshpass_filter::header_map::{is_reserved, HeaderMap};

fuzz_target!(|data: &[u8]| {
    if let Some(map) = HeaderMap::parse(data.to_vec()) {
        let pairs: Vec<(&[u8], &[u8])> = map.iter().collect();
        assert_eq!(pairs.len(), map.len());
        let again = HeaderMap::encode(pairs.iter().copied());
        if !data.is_empty() {
            assert_eq!(map, again);
        }
        for (k, _) in &pairs {
            if let Ok(name) = std::str::from_utf8(k) {
                // The first value of the name, whether looked up by a pass or noted while parsing.
                let first = pairs.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
                assert_eq!(map.get(name), first);
            }
        }
        if !pairs.iter().any(|(k, _)| *k == b"authorization") {
            assert_eq!(map.get("authorization"), None);
        }
        for k in map.reserved_names() {
            assert!(map.get(k).is_some());
        }
        // Every reserved name is listed, whatever the pass that checked the layout noted.
        let reserved = pairs.iter().filter(|(k, _)| is_reserved(k)).count();
        assert_eq!(map.reserved_names().count(), reserved);
    }
});
