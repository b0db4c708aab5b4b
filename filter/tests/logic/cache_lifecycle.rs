//! The cache over an entry's life: a reload that drops a key, refreshes that fail
//! (their backoff and the service's Retry-After, an answer that cannot be served backing
//! off too), an entry its subject token ends, and a reload to fewer slots.

use super::*;

/// The operator's emergency action for a leaked signing key: drop it from the inline
/// JWKS and reload. A token signed with it must not go on being served from the cache
/// (README: "a tightened policy never serves entries cached under the old one").
#[test]
fn a_reload_that_removes_the_signing_key_no_longer_serves_tokens_cached_under_it() {
    let mut f = fixture_with(|_| {});
    let t = f.key.svid(ISS, AUD, ALICE, f.now, 600);
    assert_eq!(f.send_token(1, &t), Verdict::Pause);
    f.answer(ok_response("p-under-k1", 300));
    assert_eq!(f.served(1).as_deref(), Some("Bearer p-under-k1"));
    // Reload (shared data survives): k1 is gone, only k2 is trusted now.
    let k2 = Key::new("k2");
    let mut cfg = base_config(&k2);
    cfg["issuers"][0]["jwks"] = json!(jwks(&[&k2]));
    f.w = worker(&cfg);
    let v = f.send_token(2, &t);
    assert_ne!(
        f.served(2).as_deref(),
        Some("Bearer p-under-k1"),
        "a token signed by a key the new config no longer trusts was served from the cache ({v:?})"
    );
    assert_eq!(f.host.replies.get(&2).map(|r| r.status), Some(401));
}

/// README: a refresh the service answers with 429 keeps the entry until it expires. The
/// service said when to come back (Retry-After): the refresh must not be sent again
/// before that.
#[test]
fn a_refresh_answered_429_is_not_retried_before_its_retry_after() {
    let mut f = fixture_with(|_| {});
    let t = f.key.svid(ISS, AUD, ALICE, f.now, 600);
    f.send_token(1, &t);
    f.answer(ok_response("p1", 300)); // entry: 290 s, refresh at 217.5 s
    f.host.now_ms += 220_000;
    f.tick();
    assert_eq!(f.send_token(2, &t), Verdict::Continue);
    f.tick();
    assert_eq!(exchanges(&f.host), 2, "one refresh");
    f.answer(error_response(429, "slow_down", Some("30")));
    // The next 30 s: hits are served p1, and no refresh goes out.
    for i in 0..29u32 {
        f.host.now_ms += 1000;
        assert_eq!(f.send_token(10 + i, &t), Verdict::Continue);
        assert_eq!(f.served(10 + i).as_deref(), Some("Bearer p1"));
        f.tick();
    }
    assert_eq!(
        exchanges(&f.host),
        2,
        "refreshes sent within the service's Retry-After of 30 s"
    );
}

/// A refresh that keeps meeting an outage is retried, but bounded (backoff, as the
/// JWKS refresh does): not one exchange per tick per entry per worker for the rest of
/// the entry's life.
#[test]
fn a_refresh_that_keeps_meeting_an_outage_is_retried_with_backoff_not_on_every_tick() {
    let mut f = fixture_with(|_| {});
    let t = f.key.svid(ISS, AUD, ALICE, f.now, 600);
    f.send_token(1, &t);
    f.answer(ok_response("p1", 300));
    f.host.now_ms += 220_000;
    f.tick();
    let first = exchanges(&f.host);
    // 60 s of traffic (one request a second) with the service down.
    let mut answered = first;
    for i in 0..60u32 {
        assert_eq!(f.send_token(100 + i, &t), Verdict::Continue);
        assert_eq!(f.served(100 + i).as_deref(), Some("Bearer p1"));
        f.tick();
        if exchanges(&f.host) > answered {
            answered = exchanges(&f.host);
            f.answer(outage());
        }
        f.host.now_ms += 1000;
    }
    let refreshes = exchanges(&f.host) - first;
    assert!(
        refreshes <= 10,
        "{refreshes} refresh calls in 60 s against a service that is down"
    );
}

/// An entry whose end is the subject token's (`exp` before the participant token's)
/// cannot be extended by a refresh: the refreshed entry ends where it did. Refreshing it
/// again and again as its remaining life shrinks (75 % of what is left, each time) only
/// mints participant tokens nobody needs.
#[test]
fn an_entry_ended_by_its_subject_token_is_not_refreshed_over_and_over() {
    let mut f = fixture_with(|_| {});
    let t = f.key.svid(ISS, AUD, ALICE, f.now, 600); // subject ends at 600 s
    f.send_token(1, &t);
    f.answer(ok_response("p0", 3600)); // participant: an hour
    let first = exchanges(&f.host);
    let mut ends = Vec::new();
    let mut n = 0u32;
    // The entry ends at 590 s (the subject's end less the 10 s margin): until then it
    // is served, and a refresh could not extend it.
    for s in 1..590u64 {
        f.host.now_ms = (f.now + s) * 1000;
        f.send_token(1000 + s as u32, &t);
        f.tick();
        if exchanges(&f.host) > first + n as usize {
            n += 1;
            f.answer(ok_response(&format!("p{n}"), 3600));
            let slot = f
                .host
                .shared
                .iter()
                .find(|(k, (v, _))| k.starts_with("meshpass/c/") && !v.is_empty())
                .map(|(_, (v, _))| String::from_utf8(v.clone()).unwrap());
            ends.push((s, slot.map(|v| v.split('|').nth(2).unwrap().to_string())));
        }
    }
    assert_eq!(
        n, 0,
        "{n} refreshes of one entry bounded by its subject token (at second, new end): {ends:?}"
    );
}

/// A background refresh answered with a token that cannot be served (expires_in 0)
/// backs off like a failed one; it went out again on every tick.
#[test]
fn a_refresh_answered_with_an_unusable_token_backs_off_instead_of_going_out_every_tick() {
    let mut f = fixture();
    let t = f.token(ALICE);
    f.send_token(1, &t);
    f.answer(ok_response("p1", 300));
    f.host.now_ms += 220_000; // past 75 % of the 290 s entry
    f.tick();
    let first = exchanges(&f.host);
    let mut answered = first;
    for ctx in 100..130u32 {
        assert_eq!(f.send_token(ctx, &t), Verdict::Continue);
        assert_eq!(f.served(ctx).as_deref(), Some("Bearer p1"));
        f.tick();
        if exchanges(&f.host) > answered {
            answered = exchanges(&f.host);
            f.answer(ok_response("p-dead", 0));
        }
        f.host.now_ms += 1000;
    }
    let refreshes = exchanges(&f.host) - first;
    assert!(
        refreshes <= 6,
        "{refreshes} refreshes in 30 s, each answered unusably"
    );
}

/// README "Shared data and workers": entries live in `cache.slots` fixed slots and an
/// ended entry's slot is emptied. A reload that lowers `cache.slots` (here from 1048576
/// to 16) leaves the old workers' entries in slot numbers the new configuration never
/// computes: the new workers sweep the slots above their count (`meshpass/c-slots`
/// records the highest count in use) and empty them once their entries have ended.
#[test]
fn a_reload_that_lowers_cache_slots_empties_the_old_slots_once_their_entries_end() {
    let mut f = fixture_with(|c| c["cache"] = json!({"slots": 1 << 20}));
    f.w.start(&mut f.host);
    // A few tokens cached under the old configuration (60 s participant tokens).
    for ctx in 1..=4u32 {
        let t = f
            .key
            .sign(&json!({"iss": ISS, "aud": AUD, "sub": ALICE, "iat": f.now,
                "exp": f.now + 600, "jti": format!("t{ctx}")}));
        assert_eq!(f.send_token(ctx, &t), Verdict::Pause);
        f.answer(ok_response(&format!("participant-{ctx}"), 60));
        assert_eq!(f.served(ctx), Some(format!("Bearer participant-{ctx}")));
    }
    let old_slots: Vec<u64> = f
        .host
        .shared
        .iter()
        .filter(|(_, (v, _))| !v.is_empty())
        .filter_map(|(k, _)| k.strip_prefix("meshpass/c/")?.parse().ok())
        .collect();
    assert_eq!(old_slots.len(), 4, "{old_slots:?}");
    assert!(old_slots.iter().any(|n| *n >= 16), "{old_slots:?}");
    // Reload to 16 slots: Envoy deletes the old root contexts; the shared data stays.
    let mut cfg = base_config(&f.key);
    cfg["cache"] = json!({"slots": 16});
    f.w = worker(&cfg);
    f.w.start(&mut f.host);
    // Ten minutes on: every old entry ended long ago.
    for _ in 0..600 {
        f.host.now_ms += 1000;
        f.tick();
    }
    let left: Vec<String> = old_slots
        .iter()
        .filter_map(|n| {
            let k = format!("meshpass/c/{n}");
            f.host
                .shared
                .get(&k)
                .filter(|(v, _)| !v.is_empty())
                .map(|(v, _)| format!("{k} = {}", String::from_utf8_lossy(v)))
        })
        .collect();
    assert!(
        left.is_empty(),
        "entries ended 9 minutes ago still held in shared data after the reload: {left:#?}"
    );
}
