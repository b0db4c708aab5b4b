//! An issuer taking a key out of its JWKS (the answer to a leaked key) ends the cached
//! participant tokens that key verified, in every worker: shared entries, each worker's
//! memo and the marker of an exchange another worker runs. A refresh that keeps every
//! key (a rotation adding one) keeps serving from the cache.

use super::*;

/// Remote keys, refreshed every 60 s.
fn remote() -> serde_json::Value {
    let mut c = base_config(&Key::new("k1"));
    let i = c["issuers"][0].as_object_mut().unwrap();
    i.remove("jwks");
    i.insert("jwks_cluster".into(), json!("jwks"));
    i.insert("jwks_path".into(), json!("/keys"));
    i.insert("jwks_refresh_secs".into(), json!(60));
    c
}

/// A fixture on remote keys whose first fetch answered with `k1`, and whose token
/// for ALICE was exchanged for participant token `p` (request 1) and served again from
/// the cache (request 2).
fn cached() -> (Fixture, String) {
    let mut f = fixture_with(|c| *c = remote());
    f.tick();
    f.answer(keys(&[&f.key]));
    let t = f.token(ALICE);
    assert_eq!(f.send_token(1, &t), Verdict::Pause);
    f.answer(ok_response("p", 600));
    assert_eq!(f.host.resumed, vec![1]);
    assert_eq!(f.send_token(2, &t), Verdict::Continue);
    assert_eq!(f.served(2).as_deref(), Some("Bearer p"));
    (f, t)
}

/// The next JWKS refresh (60 s on) answered with `answer`.
fn refresh_with(f: &mut Fixture, answer: CallResponse) {
    f.host.now_ms += 61_000;
    f.tick();
    let last = f.host.dispatched.last().unwrap();
    assert_eq!(last.cluster, "jwks", "the refresh went out");
    f.answer(answer);
}

#[test]
fn a_key_removed_from_the_jwks_no_longer_serves_the_tokens_it_verified_from_the_cache() {
    let (mut f, t) = cached();
    let rotated = Key::new("k2");
    refresh_with(&mut f, keys(&[&rotated]));
    let before = exchanges(&f.host);
    let v = f.send_token(3, &t);
    assert_ne!(
        v,
        Verdict::Continue,
        "served a token its removed key verified"
    );
    assert_ne!(f.served(3).as_deref(), Some("Bearer p"));
    // The kid is unknown now: parked for a refetch, then refused (never exchanged).
    f.host.now_ms += 61_000;
    f.tick();
    f.answer(keys(&[&rotated]));
    f.host.now_ms += 6_000;
    f.tick();
    assert_eq!(f.host.replies[&3].status, 401);
    assert_eq!(
        exchanges(&f.host),
        before,
        "no exchange for a token no key verifies"
    );
}

#[test]
fn a_key_whose_material_changed_under_the_same_kid_counts_as_removed() {
    let (mut f, t) = cached();
    let same_kid = Key::new("k1");
    refresh_with(&mut f, keys(&[&same_kid]));
    assert_eq!(f.send_token(3, &t), Verdict::Pause);
    assert_eq!(
        f.host.replies[&3].status, 401,
        "the old key's signature no longer verifies"
    );
}

#[test]
fn a_refresh_that_keeps_every_key_keeps_serving_from_the_cache() {
    let (mut f, t) = cached();
    let before = exchanges(&f.host);
    let added = Key::new("k2");
    let body = keys(&[&added, &f.key]);
    refresh_with(&mut f, body);
    assert_eq!(f.send_token(3, &t), Verdict::Continue);
    assert_eq!(f.served(3).as_deref(), Some("Bearer p"));
    assert_eq!(
        exchanges(&f.host),
        before,
        "a rotation adding a key costs no exchange"
    );
}

#[test]
fn another_workers_memo_drops_a_token_whose_key_was_removed_by_its_next_tick() {
    let (mut f, t) = cached();
    let mut other = worker(&remote());
    other.start(&mut f.host);
    f.host.ctx = 0;
    other.on_tick(&mut f.host);
    // The other worker serves the token from shared data, then from its memo.
    for ctx in [10, 11] {
        assert_eq!(send(&mut other, &mut f.host, ctx, &t), Verdict::Continue);
    }
    f.host.shared.retain(|k, _| !k.starts_with("meshpass/c/"));
    let memoised = send(&mut other, &mut f.host, 12, &t);
    assert_eq!(memoised, Verdict::Continue, "memoised");
    // The first worker learns that k1 is gone.
    refresh_with(&mut f, keys(&[&Key::new("k2")]));
    f.host.ctx = 0;
    other.on_tick(&mut f.host);
    assert_ne!(
        send(&mut other, &mut f.host, 14, &t),
        Verdict::Continue,
        "the other worker's memo served a token whose key was removed"
    );
}

#[test]
fn an_exchange_answered_after_its_key_was_removed_is_not_memoised() {
    // The memo keeps an answer whose slot holds a longer-lived entry: pairs of tokens
    // until two share one of 16 slots, then the second one's exchange is answered
    // after the refresh that removed their key.
    for pair in 0..400u64 {
        let mut f = fixture_with(|c| {
            *c = remote();
            c["cache"] = json!({"slots": 16});
            c["issuers"][0]["jwks_refresh_secs"] = json!(2);
        });
        f.tick();
        f.answer(keys(&[&f.key]));
        let long = f.key.svid(ISS, AUD, ALICE, f.now - 2 * pair, 600);
        let short = f.key.svid(ISS, AUD, ALICE, f.now - 2 * pair - 1, 600);
        f.send_token(1, &long);
        f.answer(ok_response("p-long", 3000));
        assert_eq!(f.send_token(2, &short), Verdict::Pause);
        kick(&mut f.host, &mut f.w);
        let exchange = f.host.dispatched.last().unwrap().clone();
        let filled = f
            .host
            .shared
            .iter()
            .filter(|(k, (v, _))| k.starts_with("meshpass/c/") && !v.is_empty())
            .count();
        let same_slot = filled == 1
            && f.host.shared.keys().any(|k| {
                k.starts_with("meshpass/c/")
                    && *k
                        == cache::entry_key(
                            &cache::key(
                                0,
                                &f.w.config.default_target.as_ref().unwrap().digest,
                                &short,
                                None,
                            ),
                            16,
                        )
            });
        if !same_slot {
            continue;
        }
        // The refresh, while the exchange is out.
        f.host.now_ms += 2_100;
        f.tick();
        let fetch = f.host.dispatched.last().unwrap().clone();
        assert_eq!(fetch.cluster, "jwks");
        f.host.ctx = fetch.from_ctx;
        f.w.on_call_response(&mut f.host, fetch.token, keys(&[&Key::new("k2")]));
        f.host.ctx = exchange.from_ctx;
        f.w.on_call_response(&mut f.host, exchange.token, ok_response("p-short", 300));
        assert_eq!(
            f.served(2).as_deref(),
            Some("Bearer p-short"),
            "its waiter is answered"
        );
        assert_ne!(
            f.send_token(3, &short),
            Verdict::Continue,
            "pair {pair}: the memo served a token whose key was removed"
        );
        return;
    }
    panic!("no two of 400 token pairs shared a slot");
}
