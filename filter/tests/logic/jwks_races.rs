//! Lost updates and stale answers around the JWKS lease and the stored JWKS document:
//! two workers (two Envoy threads) interleaving inside one callback through
//! [`super::leases::Racy`], as in `leases.rs`.

use super::leases::{
    answer, jwks_config, jwks_fetches, reply_status, request, send_on, shared_doc, tick,
    two_workers_with_a_refresh_out, Racy,
};
use super::*;
use meshpass_filter::api::{CallResponse, Counter, Verdict};

/// README `jwks_min_refetch_secs`: an unknown kid's request "waits (up to 5 s ...) for
/// the refetched keys ... a key rotation costs no 401". Two workers see tokens of the
/// new kid at the same moment (what a rotation looks like): both run
/// `request_refetch`; the one whose CAS write of the lease loses decides again on the
/// fresh lease and parks for the refetch the other worker just forced (it answered
/// 401 at once).
#[test]
fn an_unknown_kid_seen_on_two_workers_at_once_parks_both_requests_and_refuses_neither() {
    let now = now_secs();
    let mut host = Mock::new(now * 1000);
    let cfg = jwks_config();
    let (mut a, mut b) = (worker(&cfg), worker(&cfg));
    let (k1, k2) = (Key::new("k1"), Key::new("k2"));
    a.start(&mut host);
    let d = jwks_fetches(&host)[0].clone();
    answer(&mut a, &mut host, &d, keys(&[&k1]));
    b.start(&mut host);
    host.now_ms += 60_000; // past jwks_min_refetch_secs: a refetch may be forced
    let ta = k2.svid(ISS, AUD, ALICE, now, 600);
    let tb = k2.svid(ISS, AUD, ALICE, now + 1, 600);
    request(&mut host, 1, &ta);
    let verdict_a;
    {
        let b = &mut b;
        let tb = tb.clone();
        let mut racy = Racy::new(&mut host, "meshpass/jwks-lease/", move |m: &mut Mock| {
            // Worker B's request of the same rotation, on another thread, meanwhile.
            assert_eq!(send_on(b, m, 2, &tb), Verdict::Pause);
        });
        racy.m.ctx = 1;
        verdict_a = a.on_request(&mut racy, 1);
        assert!(racy.fired, "A tried to force the refetch");
    }
    assert_eq!(verdict_a, Verdict::Pause);
    assert!(
        !host.replies.contains_key(&1),
        "worker A's request with the new kid was refused {:?} at once: its CAS on the \
         JWKS lease lost to worker B forcing the same refetch, and request_refetch \
         returned false (no park) instead of re-reading the lease",
        reply_status(&host, 1)
    );
}

/// README `jwks_refresh_secs`: "An unknown kid forces one refetch ..., which an older
/// fetch's answer does not cancel, and its request waits for that refetch's answer."
/// `on_jwks` writes the lease back under its CAS, deciding again on a lease another
/// worker wrote meanwhile: a refetch forced in that window (its `last_forced_ms` and
/// `next_due_ms = now`) was overwritten with the next regular refresh 300 s away, and
/// the parked request refused 401 after its 5 s.
#[test]
fn a_refetch_forced_while_another_workers_answer_is_being_stored_is_not_lost() {
    let now = now_secs();
    let mut host = Mock::new(now * 1000);
    let cfg = jwks_config();
    let (mut a, mut b) = (worker(&cfg), worker(&cfg));
    let (k1, k2) = (Key::new("k1"), Key::new("k2"));
    let refresh = two_workers_with_a_refresh_out(&mut a, &mut b, &mut host, &k1);
    let t2 = k2.svid(ISS, AUD, ALICE, now, 600);
    host.now_ms += 50;
    {
        let b = &mut b;
        let t2 = t2.clone();
        // The hook fires on A's lease write in on_jwks (after it read the lease).
        let mut racy = Racy::new(&mut host, "meshpass/jwks-lease/", move |m: &mut Mock| {
            assert_eq!(
                send_on(b, m, 7, &t2),
                Verdict::Pause,
                "B parks on the new kid"
            );
        });
        racy.m.ctx = refresh.from_ctx;
        // A's regular refresh (served before the rotation) answers without k2.
        a.on_call_response(&mut racy, refresh.token, keys(&[&k1]));
        assert!(racy.fired);
    }
    assert_eq!(
        b.pending_count(Counter::JwksUnknownKid) + host.counter(Counter::JwksUnknownKid),
        1,
        "B forced a refetch"
    );
    // Six seconds of ticks on both workers: the forced refetch is due at once.
    for _ in 0..6 {
        host.now_ms += 1000;
        tick(&mut a, &mut host);
        tick(&mut b, &mut host);
    }
    assert!(
        jwks_fetches(&host).len() >= 3,
        "the refetch B forced was never sent: A's on_jwks overwrote the lease (no CAS) \
         with the state it read before B forced it; B's request got {:?}",
        reply_status(&host, 7)
    );
}

/// DESIGN "Subject tokens": the last good key set is kept; README: a rotation costs no
/// 401. Worker A's regular refresh was sent before the rotation; worker B's forced
/// refetch, sent after, brings the new key. When A's (older) answer arrives after B's,
/// `on_jwks` keeps B's newer document (its `answered_sent_ms` is later than A's
/// `sent_ms`): stored over it, every worker reloaded the old set, and the new kid's
/// tokens were refused 401 until the next forced refetch was allowed.
#[test]
fn an_older_jwks_answer_arriving_after_a_newer_one_does_not_replace_the_newer_keys() {
    let now = now_secs();
    let mut host = Mock::new(now * 1000);
    let cfg = jwks_config();
    let (mut a, mut b) = (worker(&cfg), worker(&cfg));
    let (k1, k2) = (Key::new("k1"), Key::new("k2"));
    let refresh = two_workers_with_a_refresh_out(&mut a, &mut b, &mut host, &k1);
    // The issuer rotates to k2; B sees a token of it and forces a refetch.
    let t2 = k2.svid(ISS, AUD, ALICE, now, 600);
    assert_eq!(send_on(&mut b, &mut host, 1, &t2), Verdict::Pause);
    host.now_ms += 100;
    tick(&mut b, &mut host);
    let f = jwks_fetches(&host);
    assert_eq!(f.len(), 3, "B sends the forced refetch");
    let refetch = f[2].clone();
    // B's refetch answers first, with k2: B's request goes on to its exchange.
    host.now_ms += 50;
    answer(&mut b, &mut host, &refetch, keys(&[&k1, &k2]));
    tick(&mut b, &mut host);
    assert_eq!(exchanges(&host), 1, "B's parked request went on");
    // A's refresh, sent before the rotation, answers last, without k2.
    host.now_ms += 50;
    answer(&mut a, &mut host, &refresh, keys(&[&k1]));
    let doc = shared_doc(&host);
    // Another request of the new key, on worker A, a moment later.
    let t2b = k2.svid(ISS, AUD, ALICE, now + 1, 600);
    host.now_ms += 100;
    send_on(&mut a, &mut host, 2, &t2b);
    // Up to 6 s (the 5 s park, and a tick): the request must go on to its exchange.
    for _ in 0..6 {
        if exchanges(&host) == 2 {
            break;
        }
        host.now_ms += 1000;
        tick(&mut a, &mut host);
    }
    assert!(
        exchanges(&host) == 2 && reply_status(&host, 2).is_none(),
        "a token of the new key was refused {:?} after an older JWKS answer (sent before \
         the rotation) replaced the newer stored key set; stored document has k2: {}",
        reply_status(&host, 2),
        doc.contains("\"kid\":\"k2\"")
    );
}

// ================================================================== the stored document
// An older answer stored with no CAS over a newer one; an older fetch's failure read as
// the refetch's; an unreadable stored document re-parsed and warned about per miss.

/// README "jwks_refresh_secs": an unknown kid forces one refetch "which an older
/// fetch's answer does not cancel"; a key rotation costs no 401.
///
/// Worker A's regular refresh (sent before the issuer rotated to k2) and worker B's
/// forced refetch (sent after, holding k2) are answered at the same moment on two
/// Envoy threads. `on_jwks` checked the lease's `answered_sent_ms` before it stored,
/// then stored the body with no CAS: B's newer document, stored inside A's window, was
/// overwritten by A's older one (and the lease still said B's fetch was the stored
/// one), so every worker reloaded the set without k2 and new k2 tokens were refused 401
/// for `jwks_min_refetch_secs`. The document now carries its fetch's send time and is
/// stored under CAS only over an older one.
#[test]
fn an_older_jwks_answer_stored_concurrently_with_a_newer_refetch_never_replaces_the_newer_keys() {
    let now = now_secs();
    let mut host = Mock::new(now * 1000);
    let cfg = jwks_config();
    let (mut a, mut b) = (worker(&cfg), worker(&cfg));
    let (k1, k2) = (Key::new("k1"), Key::new("k2"));
    let refresh = two_workers_with_a_refresh_out(&mut a, &mut b, &mut host, &k1);
    // The issuer rotates to k2; B sees a token of it, parks, and sends the refetch.
    let t2 = k2.svid(ISS, AUD, ALICE, now, 600);
    assert_eq!(send_on(&mut b, &mut host, 1, &t2), Verdict::Pause);
    host.now_ms += 100;
    tick(&mut b, &mut host);
    let f = jwks_fetches(&host);
    assert_eq!(f.len(), 3, "B sends the forced refetch");
    let refetch = f[2].clone();
    host.now_ms += 50;
    {
        let b = &mut b;
        let (k1, k2) = (&k1, &k2);
        // B's refetch (with k2) is answered on B's thread while A is storing its own
        // (older) answer: A has already read the lease and the stored document.
        let mut racy = Racy::new(&mut host, "meshpass/jwks/", move |m: &mut Mock| {
            answer(b, m, &refetch, keys(&[k1, k2]));
        });
        racy.m.ctx = refresh.from_ctx;
        a.on_call_response(&mut racy, refresh.token, keys(&[k1]));
        assert!(racy.fired, "A stored its answer");
    }
    let doc = shared_doc(&host);
    // Another request of the new key on worker B, a moment later: it goes on to its
    // exchange (up to the 5 s park and a tick), never refused.
    let t2b = k2.svid(ISS, AUD, ALICE, now + 1, 600);
    host.now_ms += 100;
    tick(&mut b, &mut host);
    let before = exchanges(&host);
    send_on(&mut b, &mut host, 2, &t2b);
    for _ in 0..7 {
        if exchanges(&host) > before || host.replies.contains_key(&2) {
            break;
        }
        host.now_ms += 1000;
        tick(&mut b, &mut host);
    }
    assert!(
        exchanges(&host) > before && reply_status(&host, 2).is_none(),
        "a token of the rotated-in key k2 was refused {:?}: A's older answer replaced B's \
         newer refetch answer; stored document holds k2: {}",
        reply_status(&host, 2),
        doc.contains("\"kid\":\"k2\"")
    );
}

/// README "jwks_min_refetch_secs": the request "waits ... for the refetched keys"; "a
/// refetch that failed (the endpoint down) is 503".
///
/// Worker A's regular refresh was out (sent before the rotation); worker B parked a k2
/// token and sent the forced refetch; A's older refresh then failed. `failed_since`
/// compared only the failure's time with the park time, so `retry_parked` read it as
/// the refetch's failure and answered B's request 503 while B's refetch (which brings
/// k2) was still out. The lease now records the failed fetch's send time.
#[test]
fn a_request_parked_on_an_unknown_kid_is_not_refused_when_an_older_fetch_fails_while_its_refetch_is_out(
) {
    let now = now_secs();
    let mut host = Mock::new(now * 1000);
    let cfg = jwks_config();
    let (mut a, mut b) = (worker(&cfg), worker(&cfg));
    let (k1, k2) = (Key::new("k1"), Key::new("k2"));
    let refresh = two_workers_with_a_refresh_out(&mut a, &mut b, &mut host, &k1);
    let t2 = k2.svid(ISS, AUD, ALICE, now, 600);
    assert_eq!(send_on(&mut b, &mut host, 1, &t2), Verdict::Pause);
    host.now_ms += 100;
    tick(&mut b, &mut host);
    let f = jwks_fetches(&host);
    assert_eq!(f.len(), 3, "B sends the forced refetch");
    let refetch = f[2].clone();
    // A's refresh, sent before the rotation, fails (the endpoint hiccuped then).
    host.now_ms += 50;
    let unavailable = CallResponse {
        status: Some(503),
        ..Default::default()
    };
    answer(&mut a, &mut host, &refresh, unavailable);
    host.now_ms += 900;
    tick(&mut b, &mut host);
    assert!(
        !host.replies.contains_key(&1),
        "the request parked on k2 was answered {:?} because a fetch sent before it \
         parked failed, while its own refetch was still out",
        reply_status(&host, 1)
    );
    // The refetch brings k2: the request goes on to its exchange.
    answer(&mut b, &mut host, &refetch, keys(&[&k1, &k2]));
    tick(&mut b, &mut host);
    assert_eq!(
        exchanges(&host),
        1,
        "the parked request did not go on once its refetch brought k2: {:?}",
        reply_status(&host, 1)
    );
}

/// README "Configuration": warnings a sustained condition would repeat per request are
/// logged at most once a minute per worker. A stored JWKS document that does not parse
/// is such a condition: `load_remote_keys` runs on every miss, did not record the
/// unreadable document's CAS, and so re-read, re-parsed (up to 256 KiB) and warned on
/// every miss until the next good fetch replaced it. Its CAS is now recorded and the
/// warning rate-limited.
#[test]
fn an_unreadable_stored_jwks_is_warned_about_at_most_once_a_minute_not_on_every_miss() {
    let now = now_secs();
    let mut host = Mock::new(now * 1000);
    let mut w = worker(&jwks_config());
    let k1 = Key::new("k1");
    w.start(&mut host);
    let d = jwks_fetches(&host)[0].clone();
    answer(&mut w, &mut host, &d, keys(&[&k1]));
    // The stored document is cut short.
    let (key, (doc, cas)) = host
        .shared
        .iter()
        .find(|(k, _)| k.starts_with("meshpass/jwks/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .unwrap();
    host.shared
        .insert(key, (doc[..doc.len() / 2].to_vec(), cas + 1000));
    // Ten distinct tokens (ten misses) within a second.
    for i in 0..10u32 {
        let t = k1.svid(ISS, AUD, ALICE, now + u64::from(i), 600);
        send_on(&mut w, &mut host, 10 + i, &t);
        kick(&mut host, &mut w);
        host.now_ms += 100;
    }
    // Fail closed but not broken: the last good keys still validate (exchanges went).
    assert_eq!(exchanges(&host), 10, "the last good keys were kept");
    let warned = host.warnings("stored JWKS does not parse");
    assert!(
        warned <= 1,
        "an unreadable stored JWKS was warned about {warned} times in one second"
    );
}

/// A rollout: a stored document without the send-time prefix (written by an older
/// build in the same Envoy) is still read.
#[test]
fn a_stored_jwks_without_the_send_time_prefix_is_still_read() {
    let now = now_secs();
    let mut host = Mock::new(now * 1000);
    let cfg = jwks_config();
    let (mut a, mut b) = (worker(&cfg), worker(&cfg));
    let (k1, k2) = (Key::new("k1"), Key::new("k2"));
    a.start(&mut host);
    let d = jwks_fetches(&host)[0].clone();
    answer(&mut a, &mut host, &d, keys(&[&k1]));
    let (key, cas) = host
        .shared
        .iter()
        .find(|(k, _)| k.starts_with("meshpass/jwks/"))
        .map(|(k, v)| (k.clone(), v.1))
        .unwrap();
    host.shared
        .insert(key, (jwks(&[&k2]).into_bytes(), cas + 1));
    b.start(&mut host);
    assert_eq!(jwks_fetches(&host).len(), 1, "B loaded the stored keys");
    send_on(&mut b, &mut host, 1, &k2.svid(ISS, AUD, ALICE, now, 600));
    kick(&mut host, &mut b);
    assert_eq!(exchanges(&host), 1, "{:?}", reply_status(&host, 1));
}
