//! The proxy-wasm header-map layout the filter reads in place: never panics, and
//! whatever parses encodes back to the same bytes with the same pairs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshpass_filter::header_map::HeaderMap;

fuzz_target!(|data: &[u8]| {
    if let Some(map) = HeaderMap::parse(data.to_vec()) {
        let pairs: Vec<(&[u8], &[u8])> = map.iter().collect();
        assert_eq!(pairs.len(), map.len());
        let again = HeaderMap::encode(pairs.iter().copied());
        if !data.is_empty() {
            assert_eq!(map, again);
        }
        for (k, _) in &pairs {
            if let Ok(k) = std::str::from_utf8(k) {
                assert!(map.get(k).is_some());
            }
        }
        for k in map.reserved_names() {
            assert!(map.get(k).is_some());
        }
    }
});
