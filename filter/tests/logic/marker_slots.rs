//! Two keys in one marker slot (`cache.slots` down to 16 makes it common): a claim or
//! an outcome of one key never replaces the other's live marker or unread outcome, so
//! a waiter in another worker always gets its own key's answer.

use super::leases::Racy;
use super::workers::{deliver, send_on};
use super::*;
use meshpass_filter::cache::Marker;

const SLOTS: u32 = 16;

/// The logic tests' configuration with 16 slots and the default rule's `failure_mode`.
fn slot_config(key: &Key, failure_mode: &str) -> serde_json::Value {
    let mut c = base_config(key);
    c["cache"] = json!({"slots": SLOTS});
    c["default_rule"]["failure_mode"] = json!(failure_mode);
    c
}

struct Two {
    key: Key,
    w1: Worker,
    w2: Worker,
    host: Mock,
    now: u64,
}

fn two(failure_mode: &str) -> Two {
    let key = Key::new("k1");
    let c = slot_config(&key, failure_mode);
    let now = now_secs();
    let mut host = Mock::new(now * 1000);
    host.set_prop(&PEER, ALICE);
    let mut w1 = Worker::new(Config::parse(c.to_string().as_bytes()).unwrap());
    let mut w2 = Worker::new(Config::parse(c.to_string().as_bytes()).unwrap());
    w1.start(&mut host);
    w2.start(&mut host);
    Two {
        key,
        w1,
        w2,
        host,
        now,
    }
}

fn key_of(w: &Worker, token: &str) -> String {
    cache::key(
        0,
        &w.config.default_target.as_ref().unwrap().digest,
        token,
        None,
    )
}

/// Two valid tokens of Alice whose cache keys share one slot (entry and marker).
fn colliding_tokens(t: &Two) -> (String, String) {
    let a = t.key.svid(ISS, AUD, ALICE, t.now, 600);
    let slot = cache::slot(&key_of(&t.w1, &a), SLOTS);
    for ttl in 601..10_000 {
        let b = t.key.svid(ISS, AUD, ALICE, t.now, ttl);
        if cache::slot(&key_of(&t.w1, &b), SLOTS) == slot {
            return (a, b);
        }
    }
    panic!("no collision found");
}

fn marker(host: &Mock, key: &str) -> Marker {
    host.shared
        .get(&cache::marker_key(key, SLOTS))
        .map(|(v, _)| Marker::decode(v))
        .unwrap_or(Marker::Idle)
}

/// README: "another key's live marker in the slot is never overwritten: that exchange
/// then runs without cross-worker coalescing". The worker that owns the live marker of
/// key A overwrites it with its own claim for key B of the same slot.
#[test]
fn a_second_miss_never_overwrites_the_live_marker_of_another_key_in_its_slot() {
    let mut t = two("deny");
    let (ta, tb) = colliding_tokens(&t);
    let (ka, _kb) = (key_of(&t.w1, &ta), key_of(&t.w1, &tb));
    assert_eq!(send_on(&mut t.w1, &mut t.host, 1, &ta), Verdict::Pause);
    assert!(kick(&mut t.host, &mut t.w1));
    assert_eq!(send_on(&mut t.w2, &mut t.host, 11, &ta), Verdict::Pause);
    assert!(t.w2.waiting_on_other_worker(&ka));
    // Worker 1 misses another token of the same slot while A is in flight.
    assert_eq!(send_on(&mut t.w1, &mut t.host, 2, &tb), Verdict::Pause);
    match marker(&t.host, &ka) {
        Marker::InFlight { id, .. } => assert_eq!(
            id,
            cache::id(&ka),
            "A's live in-flight marker (worker 2 waits on it) was overwritten by key B's claim"
        ),
        other => panic!("marker of A gone: {other:?}"),
    }
}

/// Consequence: the service refuses A with 403 (a policy refusal). The owner's request
/// gets 403; worker 2's waiter on A cannot find A's outcome (B's claim replaced the
/// marker), waits to its give-up time and then gets `Unavailable`: under
/// `failure_mode: allow` it is forwarded without any credential. DESIGN: "a 4xx from
/// the service or an unusable answer always denies".
#[test]
fn a_403_reaches_the_other_workers_waiter_though_the_owner_missed_another_key_of_the_slot() {
    let mut t = two("allow");
    let (ta, tb) = colliding_tokens(&t);
    send_on(&mut t.w1, &mut t.host, 1, &ta);
    assert!(kick(&mut t.host, &mut t.w1));
    let call_a = t.host.dispatched[0].token;
    send_on(&mut t.w2, &mut t.host, 11, &ta);
    send_on(&mut t.w1, &mut t.host, 2, &tb);
    t.host.ctx = 0;
    t.w1.on_call_response(
        &mut t.host,
        call_a,
        error_response(400, "unauthorized_client", None),
    );
    assert_eq!(t.host.replies[&1].status, 403, "owner's own request");
    deliver(&mut t.host, &mut t.w2);
    t.host.now_ms += 8_001; // worker 2's give-up time (2 x (timeout 2 s + 2 s))
    t.host.ctx = 0;
    t.w2.on_tick(&mut t.host);
    assert!(
        !t.host.resumed.contains(&11),
        "worker 2's waiter was forwarded without credential (fail open) after a 403; authorization now {:?}",
        t.host.req_header(11, "authorization")
    );
    assert_eq!(t.host.replies.get(&11).map(|r| r.status), Some(403));
}

/// README: the outcome record is "readable for two ticks, so a worker that missed the
/// notification still reads it". A claim for another key of the same slot (here on the
/// waiting worker itself, which handles a request before its queue message) overwrites
/// the just-published refusal: the waiter gets 503 / fail open instead of the 403.
#[test]
fn a_published_refusal_is_not_overwritten_by_another_keys_claim_before_its_waiters_read_it() {
    let mut t = two("allow");
    let (ta, tb) = colliding_tokens(&t);
    send_on(&mut t.w1, &mut t.host, 1, &ta);
    assert!(kick(&mut t.host, &mut t.w1));
    let call_a = t.host.dispatched[0].token;
    send_on(&mut t.w2, &mut t.host, 11, &ta);
    t.host.ctx = 0;
    t.w1.on_call_response(
        &mut t.host,
        call_a,
        error_response(400, "unauthorized_client", None),
    );
    assert_eq!(t.host.replies[&1].status, 403);
    // Worker 2 handles a request for B before its queue message about A.
    assert_eq!(send_on(&mut t.w2, &mut t.host, 12, &tb), Verdict::Pause);
    deliver(&mut t.host, &mut t.w2);
    t.host.now_ms += 8_001;
    t.host.ctx = 0;
    t.w2.on_tick(&mut t.host);
    assert!(
        !t.host.resumed.contains(&11),
        "worker 2's waiter on A was forwarded without credential after A's 403; reply {:?}",
        t.host.replies.get(&11).map(|r| r.status)
    );
    assert_eq!(t.host.replies.get(&11).map(|r| r.status), Some(403));
}

/// DESIGN "What reaches the application": another key's marker or unread outcome in a
/// shared slot is never overwritten, so a waiter in another worker always gets its own
/// key's answer.
///
/// `publish` read the slot to check no other key held it, then wrote its outcome with
/// no CAS. Worker 1's exchange of key K1 ran without a marker (the slot held K3's
/// unread refusal when worker 1 missed); by the time K1's answer came that refusal had
/// ended. Between worker 1's read of the slot and its write, worker 3 claimed the now
/// idle slot for key K2 (by CAS) and worker 2's request for K2 joined that exchange.
/// Worker 1's write replaced worker 3's live claim; worker 3's refusal of K2 could not
/// be published over worker 1's (live, foreign) outcome, so worker 2's waiter never
/// found K2's answer: it got 503 at its give-up time instead of the 403.
#[test]
fn a_published_outcome_never_replaces_another_workers_claim_made_after_the_slot_was_read() {
    let mut t = two("deny");
    let mut w3 =
        Worker::new(Config::parse(slot_config(&t.key, "deny").to_string().as_bytes()).unwrap());
    w3.start(&mut t.host);

    // Three tokens of Alice whose keys share one slot.
    let t1 = t.key.svid(ISS, AUD, ALICE, t.now, 600);
    let slot = cache::slot(&key_of(&t.w1, &t1), SLOTS);
    let mut same: Vec<String> = (601..20_000u64)
        .map(|ttl| t.key.svid(ISS, AUD, ALICE, t.now, ttl))
        .filter(|tok| cache::slot(&key_of(&t.w1, tok), SLOTS) == slot)
        .take(2)
        .collect();
    let t3 = same.pop().unwrap();
    let t2 = same.pop().unwrap();
    let k2 = key_of(&t.w1, &t2);
    let last_exchange = |host: &Mock| {
        host.dispatched
            .iter()
            .rev()
            .find(|d| d.cluster == "exchange")
            .unwrap()
            .token
    };
    let refused = || error_response(400, "unauthorized_client", None);

    // Worker 3's exchange of K3 is refused: its outcome stays readable for a while.
    assert_eq!(send_on(&mut w3, &mut t.host, 1, &t3), Verdict::Pause);
    assert!(kick(&mut t.host, &mut w3));
    t.host.ctx = 0;
    let call = last_exchange(&t.host);
    w3.on_call_response(&mut t.host, call, refused());
    assert_eq!(t.host.replies[&1].status, 403);

    // Worker 1 misses K1 meanwhile: that exchange runs without a marker (README).
    assert_eq!(send_on(&mut t.w1, &mut t.host, 2, &t1), Verdict::Pause);
    assert!(kick(&mut t.host, &mut t.w1));
    let call_k1 = last_exchange(&t.host);

    // K3's outcome ends before K1's answer comes.
    t.host.now_ms += 3_500;

    // K1's answer. Inside worker 1's publish (after its read of the slot, before its
    // write), worker 3 claims the idle slot for K2 and worker 2's request joins it.
    {
        let (w2, w3) = (&mut t.w2, &mut w3);
        let (t2h, k2h) = (t2.clone(), k2.clone());
        t.host.ctx = 0;
        let mut racy = Racy::new(&mut t.host, "meshpass/f/", move |m: &mut Mock| {
            assert_eq!(send_on(w3, m, 3, &t2h), Verdict::Pause);
            assert_eq!(send_on(w2, m, 4, &t2h), Verdict::Pause);
            assert!(
                w2.waiting_on_other_worker(&k2h),
                "worker 2's request should wait on worker 3's exchange of K2"
            );
        });
        t.w1.on_call_response(&mut racy, call_k1, ok_response("p1", 300));
        assert!(racy.fired, "the race window was never reached");
    }
    assert_eq!(t.host.resumed, vec![2], "worker 1's own request is served");
    let k2_marker = marker(&t.host, &k2);

    // Worker 3's exchange of K2 is refused by the service (a policy 403).
    assert!(kick(&mut t.host, &mut w3));
    let call_k2 = last_exchange(&t.host);
    assert_ne!(call_k2, call_k1);
    t.host.ctx = 0;
    w3.on_call_response(&mut t.host, call_k2, refused());
    assert_eq!(t.host.replies[&3].status, 403, "worker 3's own request");

    // Worker 2 is told; then its ticks run to well past any give-up time.
    deliver(&mut t.host, &mut t.w2);
    for _ in 0..30 {
        t.host.now_ms += 1_000;
        t.host.ctx = 0;
        t.w2.on_tick(&mut t.host);
    }
    let got = t.host.replies.get(&4).map(|r| (r.status, r.body.clone()));
    assert_eq!(
        got.as_ref().map(|g| g.0),
        Some(403),
        "worker 2's waiter on K2 did not get K2's answer (403): it got {got:?}; the slot's \
         marker right after worker 1's publish was {k2_marker:?}"
    );
}
