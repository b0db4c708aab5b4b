//! Scheduled key maintenance (`[keys]`) on three real `meshpass-exchange` processes
//! sharing one PostgreSQL database and one OpenBao: one rotation per period (not one
//! per replica), the same JWKS on every replica after each, and retirement that keeps
//! the signing version and every version a live token needs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod replicas_common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use meshpass_testkit::{free_port, Postgres};
use serde_json::{json, Value};

/// The schedule under test: a version signs 1 s after its creation, replicas refresh
/// every second, tokens live 2 s and verifiers allow 1 s past `exp`.
const ROTATE_EVERY: Duration = Duration::from_secs(4);
const CHECK: Duration = Duration::from_millis(400);
const WINDOW: Duration = Duration::from_secs(20);

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn kid_of(token: &str) -> String {
    let header = token.split('.').next().unwrap();
    let h: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    h["kid"].as_str().unwrap().to_string()
}

fn exp_of(token: &str) -> f64 {
    let claims = token.split('.').nth(1).unwrap();
    let c: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
    c["exp"].as_f64().unwrap()
}

fn kids(jwks: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(jwks).unwrap();
    v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect()
}

fn version_of(kid: &str) -> u64 {
    kid.rsplit_once(":v").unwrap().1.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_rotate_once_per_period_serve_one_jwks_and_retire_only_expired_versions() {
    let bao = tokio::task::spawn_blocking(replicas_common::openbao)
        .await
        .unwrap();
    let db = Postgres::fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "k1");
    let extra = json!({
        "token": {"max_ttl_secs": 2},
        "vault": {"publish_lead": "1s", "key_refresh_interval": "1s"},
        "keys": {"rotate_every": "4s", "check_interval": "400ms", "verifier_leeway": "1s"},
        "mappings": [{
            "name": "web-to-payments", "subject": format!("spiffe://{TD}/ns/shop/*"),
            "resource": "payments", "participant": "acme", "scopes": ["read"], "ttl_secs": 2,
        }],
    });
    let mut replicas = Vec::new();
    for name in ["r1", "r2", "r3"] {
        let port = free_port();
        let cfg = replicas_common::config(port, &bao, &db.url(), &issuer, extra.clone());
        let d = dir.path().to_path_buf();
        replicas.push(
            tokio::task::spawn_blocking(move || replicas_common::start(&d, name, port, &cfg))
                .await
                .unwrap(),
        );
    }
    let bases: Vec<String> = replicas.iter().map(|r| r.base_url()).collect();
    let client = reqwest::Client::new();
    let jwks = |base: String| {
        let client = client.clone();
        async move {
            client
                .get(format!("{base}/.well-known/jwks.json"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };

    // Tokens seen: kid → latest exp. A token is valid until exp + the verifiers' 1 s.
    let mut minted: BTreeMap<String, f64> = BTreeMap::new();
    // Versions first seen in some JWKS and not yet seen in all three identical ones.
    let mut pending: BTreeMap<u64, Instant> = BTreeMap::new();
    let mut newest_seen = 1;
    let mut retired_seen = false;
    // Every version's creation time in Vault (a retired version leaves `keys`).
    let mut created: BTreeMap<u64, SystemTime> = BTreeMap::new();
    let read_created = |created: &mut BTreeMap<u64, SystemTime>| {
        let key = tokio::task::block_in_place(|| {
            bao.api_ok(
                "GET",
                &format!("transit/keys/{}", replicas_common::KEY),
                None,
            )
        });
        for (v, e) in key["data"]["keys"].as_object().unwrap() {
            let t = meshpass_exchange::vault::parse_rfc3339(e["creation_time"].as_str().unwrap())
                .unwrap();
            created.insert(v.parse().unwrap(), t);
        }
        key
    };
    // The transit key was created just now: every replica answers 503 until its
    // publish lead (1 s) has passed (the safe side, `vault/transit.rs`). Wait for each
    // to sign once before the window opens, so the window sees only the schedule.
    for base in &bases {
        let ready = Instant::now();
        loop {
            let subject = issuer.svid(WEB, now(), 600);
            let (status, body) = replicas_common::exchange(&client, base, &subject, WEB)
                .await
                .unwrap();
            if status == 200 {
                break;
            }
            assert!(
                status == 503 && ready.elapsed() < Duration::from_secs(30),
                "{base} never signed: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let start = Instant::now();
    let mut i = 0usize;
    while start.elapsed() < WINDOW {
        let base = &bases[i % bases.len()];
        i += 1;
        let subject = issuer.svid(WEB, now(), 600);
        let (status, body) = replicas_common::exchange(&client, base, &subject, WEB)
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
        let token = body["access_token"].as_str().unwrap();
        let e = minted.entry(kid_of(token)).or_insert(0.0);
        *e = e.max(exp_of(token));

        let mut sets = Vec::new();
        for b in &bases {
            sets.push(jwks(b.clone()).await);
        }
        let t = unix_now();
        for (kid, exp) in &minted {
            if exp + 1.0 > t {
                for (r, set) in sets.iter().enumerate() {
                    assert!(
                        kids(set).contains(kid),
                        "replica {} no longer publishes {kid}, whose token is valid until {exp} + 1 s (now {t}): {set}",
                        r + 1
                    );
                }
            }
        }
        for set in &sets {
            for k in kids(set) {
                let v = version_of(&k);
                if v > newest_seen {
                    newest_seen = v;
                    pending.insert(v, Instant::now());
                }
            }
            retired_seen |= !kids(set).contains(&format!("{}:v1", replicas_common::KEY));
        }
        if sets.iter().all(|s| s == &sets[0]) {
            let newest = kids(&sets[0]).iter().map(|k| version_of(k)).max().unwrap();
            pending.retain(|v, _| *v > newest);
        }
        for (v, since) in &pending {
            assert!(
                since.elapsed() < Duration::from_secs(3),
                "v{v} has not been in every replica's JWKS (byte for byte) for {:?}",
                since.elapsed()
            );
        }
        read_created(&mut created);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }

    // Metrics, audit log and Vault read until they agree (a rotation may be half done
    // between the reads: Vault first, then the audit commit, then the metric).
    let sum = |name: &'static str| {
        let (client, bases) = (client.clone(), bases.clone());
        async move {
            let mut total = 0.0;
            for b in &bases {
                total += replicas_common::metric(&client, b, name).await.unwrap();
            }
            total
        }
    };
    let audited = |action: &str| {
        db.psql(&format!(
            "SELECT count(*) FROM audit_log WHERE action = '{action}' AND actor = 'system:key-schedule'"
        ))
        .trim()
        .parse::<f64>()
        .unwrap()
    };
    let mut attempt = 0;
    let (key, rotations) = loop {
        let m1 = (
            sum("meshpass_key_rotations_total").await,
            sum("meshpass_key_retirements_total").await,
        );
        let audit = (audited("keys.rotate"), audited("keys.retire"));
        let key = read_created(&mut created);
        let m2 = (
            sum("meshpass_key_rotations_total").await,
            sum("meshpass_key_retirements_total").await,
        );
        let rotations = key["data"]["latest_version"].as_u64().unwrap() - 1;
        // Every rotation counted once, by the replica that did it, and audited as the
        // system actor; the same for retirements.
        if m1 == m2 && m1 == audit && m1.0 == rotations as f64 {
            break (key, rotations);
        }
        attempt += 1;
        assert!(
            attempt < 10,
            "metrics {m1:?}/{m2:?}, audit {audit:?}, Vault {rotations} rotations never agreed"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    for b in &bases {
        let errors = replicas_common::metric(&client, b, "meshpass_key_maintenance_errors_total")
            .await
            .unwrap();
        assert_eq!(errors, 0.0, "{b}");
    }
    // Vault's own record: one version per period, each at least rotate_every after the
    // last (a rotation per replica would put versions milliseconds apart), none late.
    let late_bound = ROTATE_EVERY + CHECK.mul_f64(1.25) + Duration::from_secs(3);
    assert_eq!(
        created.len() as u64,
        rotations + 1,
        "a version's creation time was missed"
    );
    let created: Vec<(u64, SystemTime)> = created.into_iter().collect();
    for w in created.windows(2) {
        let gap = w[1].1.duration_since(w[0].1).unwrap();
        assert!(
            gap >= ROTATE_EVERY,
            "v{} came {gap:?} after v{}: rotated twice in one period",
            w[1].0,
            w[0].0
        );
        assert!(gap <= late_bound, "v{} came {gap:?} late", w[1].0);
    }
    assert!(
        rotations >= 3,
        "{rotations} rotations in {WINDOW:?} at one per {ROTATE_EVERY:?}"
    );
    // Retirement happened, and never reached the signing version.
    let min_dec = key["data"]["min_decryption_version"].as_u64().unwrap();
    assert!(min_dec > 1 && retired_seen, "nothing was retired: {key}");
    assert!(min_dec < rotations + 1, "retired up to the newest version");
    eprintln!(
        "{rotations} rotations, versions below {min_dec} retired, {} tokens' kids checked",
        minted.len()
    );
}
