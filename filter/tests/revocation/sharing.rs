//! What one worker's poll leaves the others, at the edges found by an audit: answers
//! and queue messages in either order, a set too large to share, a stored set that
//! does not parse, a reload that routes the feed through another cluster or shortens
//! its poll interval.

use super::two::{parse, Two};
use super::*;

// ---------------------------------------------------------------- version order

/// The feed answer of an overdue poll (worker 0's, sent from version 0 when the service
/// was at version 6) comes in *before* worker 0 has handled the message telling it that
/// worker 1 stored version 7 meanwhile (queue messages and call answers are separate
/// events of the worker's loop: either may come first). The guard in `on_feed` compares
/// the poll's `since` with the worker's own set only, not with the shared one, so the
/// older answer is stored over the newer set and every worker goes back to it.
#[test]
fn an_older_answer_handled_before_the_message_about_a_newer_set_never_replaces_that_set() {
    let mut t = Two::new();
    let tb = t.token(BOB);
    t.tick(0);
    let slow = t.polls().last().unwrap().clone();
    assert_eq!(slow.header(":path"), Some("/revocations?since=0"));
    // The lease runs out; worker 1 polls and stores version 7 (ALICE and BOB revoked).
    t.later(5001);
    t.poll(
        1,
        feed(json!({"version": 7, "full": true,
            "added": [subject("rv-1", ALICE, "a"), subject("rv-2", BOB, "b")]})),
    );
    // Worker 0's answer comes first, then its queue message.
    t.host.ctx = 0;
    t.w[0].on_call_response(
        &mut t.host,
        slow.token,
        feed(json!({"version": 6, "full": true, "added": [subject("rv-1", ALICE, "a")]})),
    );
    t.drain(0);
    t.drain(1);
    t.tick(0);
    t.tick(1);
    let mut wrong = Vec::new();
    for (w, ctx) in [(0usize, 10u32), (1, 11)] {
        t.send(w, ctx, BOB, &tb);
        if !t.refused(ctx) {
            wrong.push(format!(
                "worker {w} at version {}: BOB not refused",
                t.w[w].revocation_version()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "the set went back from version 7 to 6: {wrong:?}"
    );
}

// ---------------------------------------------------------------- bounds / sharing

/// Every answer is within the 4 MiB bound, but two deltas together make a set whose
/// shared-data form is past it. The polling worker accepts and enforces it, stores it,
/// and tells the others, who cannot read it back (`decode` refuses it as too large):
/// they keep the older set and serve the subject worker 0 refuses. A set one worker may
/// enforce must be one every worker can load (or the delta is refused whole, as for the
/// entry bound).
#[test]
fn a_delta_that_makes_the_set_too_large_to_share_leaves_no_worker_behind() {
    let mut t = Two::new();
    let ta = t.token(ALICE);
    t.poll(0, feed(json!({"version": 1, "full": true, "added": []})));
    t.drain(1);
    let long = "j".repeat(2000);
    let batch = |from: usize, extra: Option<Value>| {
        let mut added: Vec<Value> = extra.into_iter().collect();
        for i in from..from + 1100 {
            added.push(jti(&format!("rv-{i}"), &format!("{long}{i}"), "r"));
        }
        added
    };
    let d2 = feed(json!({"version": 2, "full": false, "added": batch(0, None), "removed": []}));
    let d3 = feed(json!({"version": 3, "full": false,
        "added": batch(1100, Some(subject("rv-a", ALICE, "alice"))), "removed": []}));
    for d in [&d2, &d3] {
        assert!(d.body.len() < meshpass_filter::feed::MAX_FEED_BYTES);
    }
    t.later(1000);
    t.poll(0, d2);
    t.drain(1);
    t.later(1000);
    t.poll(0, d3);
    t.drain(1);
    t.tick(1);
    let v = (t.w[0].revocation_version(), t.w[1].revocation_version());
    t.send(0, 10, ALICE, &ta);
    t.send(1, 11, ALICE, &ta);
    assert_eq!(
        t.refused(10),
        t.refused(11),
        "workers disagree on ALICE (versions {v:?}): worker 0 refused: {}, worker 1 refused: {}",
        t.refused(10),
        t.refused(11)
    );
    assert_eq!(v.0, v.1, "workers enforce different versions");
}

// ---------------------------------------------------------------- warnings

/// A stored set that does not parse (written by another build sharing the VM id, or
/// corrupted) is warned about on every tick of every worker whose version differs from
/// the lease's: with a 1 s tick, 60 warn lines a minute per worker. Every other
/// repeated condition is warned about once a minute.
#[test]
fn a_stored_set_that_does_not_parse_is_warned_about_once_a_minute_not_on_every_tick() {
    let mut t = Two::new();
    t.poll(
        0,
        feed(json!({"version": 3, "full": true, "added": [subject("rv-1", ALICE, "a")]})),
    );
    let rc = t.w[0].config.revocation.clone().unwrap();
    // Another writer leaves a set this build cannot read, at a newer version.
    t.host.shared.insert(
        rc.set_key.clone(),
        (b"{\"v\":2,\"items\":[]}".to_vec(), 999_999),
    );
    let lease = format!("{}|4|{}|0|{}", u64::MAX / 2, t.host.now_ms, t.host.now_ms);
    t.host
        .shared
        .insert(rc.lease_key.clone(), (lease.into_bytes(), 999_998));
    for _ in 0..70 {
        t.later(1000);
        t.tick(0);
    }
    let n = t.host.warnings("stored revocation set does not parse");
    assert!(
        (1..=2).contains(&n),
        "{n} warnings in 70 s (one a minute expected)"
    );
}

// ---------------------------------------------------------------- configuration reload

/// A reload that moves the feed to its own copy of the exchange cluster (what
/// docs/DESIGN.md describes the e2e topology doing, so the exchange cluster's counter
/// counts exchanges only): the same service, authority and path, but the set's
/// shared-data key is a hash of the cluster name, so the new workers start with no
/// revocations at all while the shared cache (whose keys do not change) still holds
/// tokens the old set revokes. Until the new key's first poll is answered (for good
/// while the service is down) a revoked subject's cached token is served. README: "A
/// worker started by a configuration reload loads the stored set at start".
#[test]
fn a_reload_that_moves_the_feed_to_another_cluster_still_refuses_what_the_stored_set_revokes() {
    let mut t = Two::new();
    let ta = t.token(ALICE);
    // ALICE's token is cached (shared data only), then ALICE is revoked.
    t.cache(0, 1, ALICE, &ta, "pa");
    t.poll(
        0,
        feed(json!({"version": 5, "full": true,
            "added": [subject("rv-1", ALICE, "compromised node")]})),
    );
    // The reload: the same service, the feed through its own copy of the cluster.
    let mut cfg = config(&t.key);
    cfg["revocation"]["cluster"] = json!("exchange-feed");
    let mut fresh = Worker::new(parse(&cfg));
    fresh.start(&mut t.host);
    t.w = vec![fresh];
    // The service is down: the new workers' first poll fails.
    t.later(1000);
    t.poll(0, status(503));
    assert_eq!(t.send(0, 2, ALICE, &ta), Verdict::Pause, "ALICE was served");
    assert!(t.refused(2), "{:?}", t.host.replies.get(&2));
}

/// README, `revocation.poll_interval_ms`: "A revocation reaches every worker within
/// about this plus one tick and a round trip." The poll schedule is a lease in shared
/// data that survives a reload (the feed id is the service's authority and path). A
/// reload that shortens the interval from an hour to 5 s must not keep the schedule the
/// old configuration wrote an hour ahead: as the JWKS lease, a schedule further ahead
/// than this configuration ever writes is stale, and polled at once.
#[test]
fn a_reload_that_shortens_the_revocation_poll_interval_polls_on_the_new_interval() {
    let mut t = Two::new();
    let mut cfg = config(&t.key);
    cfg["revocation"]["poll_interval_ms"] = json!(3_600_000);
    let mut old = Worker::new(parse(&cfg));
    old.start(&mut t.host);
    t.w = vec![old];
    t.poll(0, feed(json!({"version": 1, "full": true})));
    // The reload: the same feed, polled every 5 s now; the shared data stays.
    cfg["revocation"]["poll_interval_ms"] = json!(5000);
    let mut fresh = Worker::new(parse(&cfg));
    fresh.start(&mut t.host);
    t.w = vec![fresh];
    assert_eq!(
        t.w[0].revocation_version(),
        1,
        "the stored set is loaded at start"
    );
    let before = t.polls().len();
    // A generous two minutes of one-second ticks (24 intervals of the new config).
    for _ in 0..120 {
        t.later(1000);
        t.tick(0);
        if t.polls().len() > before {
            break;
        }
    }
    let lease: Vec<String> = t
        .host
        .shared
        .iter()
        .filter(|(k, _)| k.starts_with("meshpass/rv-lease/"))
        .map(|(k, (v, _))| format!("{k} = {}", String::from_utf8_lossy(v)))
        .collect();
    assert!(
        t.polls().len() > before,
        "no revocation poll in 2 minutes after a reload to poll_interval_ms 5000 (lease: {lease:?}, now {})",
        t.host.now_ms
    );
}
