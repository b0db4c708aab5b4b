//! Two keys in one marker slot (`cache.slots` down to 16 makes it common): a claim or
//! an outcome of one key never replaces the other's live marker or unread outcome, so
//! a waiter in another worker always gets its own key's answer.

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
