//! What the filter reads from request values before any rule applies: the `:path`
//! normal form rules and bypass routes match on (`path::normalise`), and the
//! `traceparent` it forwards (`request::is_traceparent`). Never panics; a normal form
//! has no query, no `\`, no empty, `.` or `..` segment (nor once its `;` parameters are
//! removed), so no spelling of a path steers past a rule; without a percent sign left
//! it is its own normal form; an unchanged path is borrowed. A forwarded traceparent is exactly the W3C version-00 layout.
#![no_main]

use std::borrow::Cow;

use libfuzzer_sys::fuzz_target;
use meshpass_filter::path::{normalise, without_params};
use meshpass_filter::request::is_traceparent;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let as_sent = s.split_once('?').map_or(s, |(p, _)| p);
    let n = normalise(s);
    assert!(!n.contains('?'));
    if matches!(n, Cow::Owned(_)) {
        assert_ne!(n.as_ref(), as_sent);
    } else {
        assert_eq!(n.as_ref(), as_sent);
    }
    if as_sent.starts_with('/') {
        assert!(n.starts_with('/') && !n.contains('\\'));
        let body = n.strip_prefix('/').unwrap_or_default();
        let body = body.strip_suffix('/').unwrap_or(body);
        if !body.is_empty() {
            for seg in body.split('/') {
                assert!(!matches!(seg, "" | "." | ".."), "{s:?} -> {n:?}");
            }
        }
        if !n.contains('%') {
            assert_eq!(normalise(&n), n, "{s:?} -> {n:?}");
        }
        // Rules match on it with the parameters removed: no empty segment there either
        // (`/;x/admin` is `/admin` to Tomcat and Spring, so it must not be `//admin`).
        let p = without_params(&n);
        assert!(
            p.starts_with('/')
                && !p.contains(';')
                && !p.contains("//")
                && !p.split('/').any(|seg| seg == "." || seg == ".."),
            "{s:?} -> {n:?} -> {p:?}"
        );
    }

    if is_traceparent(s) {
        let parts: Vec<&str> = s.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [2, 32, 16, 2]
        );
        assert!(parts.iter().all(|p| p
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))));
        assert!(parts[0] != "ff" && parts[1].bytes().any(|b| b != b'0'));
        assert!(parts[2].bytes().any(|b| b != b'0'));
    }
});
