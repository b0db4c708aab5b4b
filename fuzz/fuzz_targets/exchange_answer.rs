//! The filter's reading of the exchange service's answer (`outcome::classify`, and the
//! `expires_in` the cache entry is sized by): never panics; only a 200 with a Bearer
//! token yields a token, and that token is safe in a header; a 200 or a 4xx never fails
//! open (only a missing answer or a 5xx is an outage); descriptions and Retry-After stay
//! in their bounds; the outcome survives the cross-worker marker, and the entry the
//! token is cached in round-trips and expires after now, refreshing before it expires.
//! The ids the revocation check reads from a participant token (`TokenIds::of`, here
//! with the body as the payload) come only from a JSON object's `jti` and `act.sub`.
//!
//! Input: byte 0 picks the status (and, top bit, whether the first line of the rest is
//! a Retry-After value); the rest is the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshpass_core::b64;
use meshpass_core::oauth::TokenExchangeResponse;
use meshpass_filter::api::CallResponse;
use meshpass_filter::cache::{lifetimes, Entry, Marker};
use meshpass_filter::feed::TokenIds;
use meshpass_filter::outcome::{classify, Outcome};

const STATUSES: [Option<u16>; 16] = [
    None,
    Some(200),
    Some(200),
    Some(200),
    Some(400),
    Some(401),
    Some(403),
    Some(429),
    Some(500),
    Some(503),
    Some(204),
    Some(302),
    Some(404),
    Some(502),
    Some(100),
    Some(599),
];
const RETRY_DEFAULT: u64 = 7;
const SUBJECT: &str = "spiffe://cluster.local/ns/shop/sa/web";
const NOW_MS: u64 = 1_700_000_000_000;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let status = STATUSES[usize::from(pick & 0x0f)];
    let (retry_after, body) = match rest.iter().position(|b| *b == b'\n') {
        Some(i) if pick & 0x80 != 0 => (
            Some(String::from_utf8_lossy(&rest[..i]).into_owned()),
            &rest[i + 1..],
        ),
        _ => (None, rest),
    };
    let resp = CallResponse {
        status,
        retry_after,
        body: body.to_vec(),
    };
    let outcome = classify(&resp, RETRY_DEFAULT);
    assert_eq!(
        outcome.is_outage(),
        matches!(outcome, Outcome::Unavailable(_))
    );
    match status {
        None => assert!(outcome.is_outage()),
        Some(s) if s >= 500 => assert!(outcome.is_outage()),
        Some(200) => assert!(matches!(outcome, Outcome::Token(_) | Outcome::Faulty(_))),
        Some(_) => assert!(!outcome.is_outage(), "{status:?} failed open"),
    }
    match &outcome {
        Outcome::Token(t) => {
            assert_eq!(status, Some(200));
            assert!(!t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()));
            let parsed = serde_json::from_slice::<TokenExchangeResponse>(body);
            assert!(
                parsed.is_ok_and(
                    |r| &r.access_token == t && r.token_type.eq_ignore_ascii_case("bearer")
                )
            );
        }
        Outcome::InvalidGrant(d) | Outcome::Forbidden(d) => {
            assert!(status.is_some_and(|s| (400..500).contains(&s) && s != 429));
            assert!(d.len() < 512);
        }
        Outcome::RateLimited(s) | Outcome::Unavailable(s) => {
            assert!(*s == RETRY_DEFAULT || (1..=3600).contains(s));
        }
        Outcome::Faulty(s) => assert_eq!(*s, RETRY_DEFAULT),
    }
    // What other workers read back from the marker (Worker::publish).
    let marker = Marker::Done {
        id: "0123456789abcdef0123456789abcdef".into(),
        until_ms: NOW_MS + 3000,
        subject: SUBJECT.into(),
        outcome: outcome.clone(),
    };
    assert_eq!(Marker::decode(&marker.encode()), marker);
    // The cache entry (Worker::store reads expires_in the same way).
    if let Outcome::Token(t) = &outcome {
        let expires_in = serde_json::from_slice::<TokenExchangeResponse>(body)
            .map(|r| r.expires_in)
            .unwrap_or(0);
        let subject_exp = NOW_MS / 1000 + u64::from(pick);
        if let Some((expires_ms, refresh_ms)) =
            lifetimes(NOW_MS, expires_in, subject_exp, 10_000, 75)
        {
            assert!(NOW_MS < expires_ms && expires_ms <= subject_exp * 1000);
            assert!(NOW_MS <= refresh_ms && refresh_ms <= expires_ms);
            let e = Entry {
                id: "0123456789abcdef0123456789abcdef",
                expires_ms,
                refresh_ms,
                subject_exp,
                subject: SUBJECT,
                token: t,
            };
            assert_eq!(Entry::decode(&e.encode()), Some(e));
        }
    }
    // The revocation check's read of a participant token's payload.
    if let Outcome::Token(t) = &outcome {
        let _ = TokenIds::of(t);
    }
    if let Some(ids) = TokenIds::of(&format!("e30.{}.c2ln", b64::encode(body))) {
        let claims = serde_json::from_slice::<serde_json::Value>(body);
        let Ok(serde_json::Value::Object(claims)) = claims else {
            panic!("ids {ids:?} read from a payload that is not a JSON object");
        };
        let jti = claims.get("jti").and_then(|j| j.as_str());
        assert_eq!(ids.jti.as_deref(), jti);
        let actor = claims
            .get("act")
            .and_then(|a| a.get("sub"))
            .and_then(|s| s.as_str());
        if actor.is_some() {
            assert_eq!(ids.actors.first().map(String::as_str), actor);
        }
    }
});
