//! JWKS parsing: never panics; every member is either kept or reported, once.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshpass_core::{Algorithm, KeySet};

fuzz_target!(|data: &[u8]| {
    let Ok((set, rejected)) = KeySet::parse(data) else {
        return;
    };
    let mut indices: Vec<usize> = rejected.iter().map(|r| r.index).collect();
    indices.dedup();
    assert_eq!(indices.len(), rejected.len());
    for key in set.keys() {
        // A kept key fits at least one algorithm, and its kid is unique in the set.
        assert!(Algorithm::ALL.iter().any(|a| key.fits(*a)));
        if let Some(kid) = key.kid.as_deref() {
            assert_eq!(
                set.keys()
                    .iter()
                    .filter(|k| k.kid.as_deref() == Some(kid))
                    .count(),
                1
            );
        }
    }
    for alg in Algorithm::ALL {
        let _ = set.select(None, alg);
    }
});
