//! Differential test: core never accepts a signature that `jsonwebtoken` (an independent
//! JOSE implementation, on its own RustCrypto versions) rejects. Where core is stricter,
//! the rule that makes it so is named; any other disagreement fails the test.
//!
//! Both run at the signature level: core through `verify_compact_jws` (and, for JSON
//! payloads, `CompactJws::parse` + `verify`, which adds the duplicate-member rule);
//! `jsonwebtoken` through `decode` with the header's `alg` allowed and every claim
//! check off, so only its parsing and signature verification decide. ES512 is outside
//! the comparison: `jsonwebtoken` has no P-521 (the RFC 7520 §4.3 vector in
//! `conformance.rs` covers it). Every other algorithm is generated here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;

use jsonwebtoken::{DecodingKey, Validation};
use meshpass_core::b64;
use meshpass_core::{verify_compact_jws, CompactJws, Jwk, DEFAULT_MAX_TOKEN_BYTES};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::{json, Value};
use support::*;

const MAX: usize = DEFAULT_MAX_TOKEN_BYTES;

/// The rules by which core refuses what `jsonwebtoken` accepts, by core's error reason.
/// A disagreement whose reason is not here fails the test.
const STRICTER_RULES: [(&str, &str); 6] = [
    (
        "critical_header",
        "any crit is refused, also crit [\"b64\"] with b64 true (no extension is understood)",
    ),
    (
        "forbidden_header",
        "a header jwk/jku/x5u/x5c is refused (the token must not pick its key)",
    ),
    ("bad_type", "typ, when present, is JWT or JOSE"),
    (
        "bad_key_id",
        "kid is 1..=256 bytes of [A-Za-z0-9._~:+/=@-] without '..'",
    ),
    (
        "json",
        "no member name repeated at any depth of header or payload",
    ),
    (
        "key_algorithm_mismatch",
        "the key's pinned alg must equal the header alg",
    ),
];

/// One key under test, as both libraries see it.
struct Key {
    name: &'static str,
    core: Jwk,
    jwt: DecodingKey,
}

fn key(name: &'static str, jwk: Value) -> Key {
    let core = Jwk::from_json(jwk.as_object().unwrap()).unwrap();
    let jwt = match jwk["kty"].as_str().unwrap() {
        "RSA" => {
            DecodingKey::from_rsa_components(jwk["n"].as_str().unwrap(), jwk["e"].as_str().unwrap())
                .unwrap()
        }
        _ => {
            DecodingKey::from_ec_components(jwk["x"].as_str().unwrap(), jwk["y"].as_str().unwrap())
                .unwrap()
        }
    };
    Key { name, core, jwt }
}

/// `jsonwebtoken`'s verdict: its header parsing, the header's alg, the signature
/// (`decode` with every claim check off). `decode` cannot read a payload that is not
/// JSON: there its signature-level `crypto::verify` decides, after the header checks
/// `decode` would make (`crit` refused).
fn jsonwebtoken_accepts(token: &str, key: &DecodingKey) -> bool {
    let Ok(header) = jsonwebtoken::decode_header(token) else {
        return false;
    };
    let mut v = Validation::new(header.alg);
    v.required_spec_claims.clear();
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    if jsonwebtoken::decode::<Value>(token, key, &v).is_ok() {
        return true;
    }
    let segments: Vec<&str> = token.split('.').collect();
    let [_, payload, signature] = segments[..] else {
        return false;
    };
    let payload_is_json =
        jsonwebtoken_b64(payload).is_some_and(|p| serde_json::from_slice::<Value>(&p).is_ok());
    if payload_is_json || header.crit.is_some() {
        return false;
    }
    let message = &token[..token.len() - signature.len() - 1];
    jsonwebtoken::crypto::verify(signature, message.as_bytes(), key, header.alg).unwrap_or(false)
}

/// Decodes base64url as `jsonwebtoken` does (URL-safe, no padding, canonical).
fn jsonwebtoken_b64(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()
}

/// Core's verdict, `Err(reason)` when refused. JSON payloads also go through
/// `CompactJws` (the subject-token parser); both must accept.
fn core_verdict(token: &str, key: &Jwk) -> Result<(), &'static str> {
    verify_compact_jws(token, key, MAX).map_err(|e| e.reason())?;
    let json_payload = token
        .split('.')
        .nth(1)
        .and_then(|p| b64::decode(p).ok())
        .is_some_and(|p| serde_json::from_slice::<Value>(&p).is_ok());
    if json_payload {
        CompactJws::parse(token, MAX)
            .and_then(|jws| jws.verify(key))
            .map_err(|e| e.reason())?;
    }
    Ok(())
}

/// Tallies the outcomes and fails on a signature only core accepts, or on an
/// unnamed stricter rule.
#[derive(Default)]
struct Tally {
    both_accept: usize,
    both_reject: usize,
    stricter: BTreeMap<&'static str, usize>,
}

impl Tally {
    fn check(&mut self, what: &str, token: &str, key: &Key) {
        let jwt = jsonwebtoken_accepts(token, &key.jwt);
        match (core_verdict(token, &key.core), jwt) {
            (Ok(()), true) => self.both_accept += 1,
            (Ok(()), false) => panic!(
                "{what} (key {}): core accepts a signature jsonwebtoken rejects: {token}",
                key.name
            ),
            (Err(_), false) => self.both_reject += 1,
            (Err(reason), true) => {
                let Some((_, rule)) = STRICTER_RULES.iter().find(|(r, _)| *r == reason) else {
                    panic!(
                        "{what} (key {}): core refuses ({reason}) what jsonwebtoken accepts, \
                         and no rule is named for it: {token}",
                        key.name
                    )
                };
                *self.stricter.entry(rule).or_default() += 1;
            }
        }
    }
}

/// base64url(JSON header) "." base64url(payload) "." base64url(signature by `signer`).
fn token(header: &Value, payload: &[u8], signer: &Signer<'_>) -> String {
    let input = format!(
        "{}.{}",
        b64::encode(header.to_string().as_bytes()),
        b64::encode(payload)
    );
    let sig = signature_over(
        input.as_bytes(),
        header["alg"].as_str().unwrap_or(""),
        signer,
    );
    format!("{input}.{}", b64::encode(&sig))
}

fn claims_bytes() -> Vec<u8> {
    claims().to_string().into_bytes()
}

/// The order of the P-256 group, big-endian.
const P256_N: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

/// `n - s` for a 32-byte big-endian `s` (turns a low-S signature into its high-S twin).
fn negate_mod_n(s: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; 32];
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let d = i16::from(P256_N[i]) - i16::from(s[i]) - borrow;
        borrow = i16::from(d < 0);
        out[i] = d.rem_euclid(256) as u8;
    }
    out
}

#[test]
fn core_never_accepts_a_signature_jsonwebtoken_rejects() {
    let ec256 = p256_key();
    let ec384 = p384_key();
    let rsa = key("rsa", rsa_jwk(rsa_key(), "k"));
    let rsa_other = key("rsa-other", rsa_jwk(rsa_key_2(), "k"));
    let rsa_pinned = {
        let mut j = rsa_jwk(rsa_key(), "k");
        j["alg"] = json!("RS256");
        key("rsa-pinned-RS256", j)
    };
    let p256 = key("p256", p256_jwk(&ec256, "k"));
    let p256_other = key("p256-other", p256_jwk(&p256_key(), "k"));
    let p384 = key("p384", p384_jwk(&ec384, "k"));
    let keys = [&rsa, &rsa_other, &rsa_pinned, &p256, &p256_other, &p384];
    let rsa_signer = Signer::Rsa(rsa_key());
    let signers: [(&str, Signer<'_>); 8] = [
        ("RS256", Signer::Rsa(rsa_key())),
        ("RS384", Signer::Rsa(rsa_key())),
        ("RS512", Signer::Rsa(rsa_key())),
        ("PS256", Signer::Rsa(rsa_key())),
        ("PS384", Signer::Rsa(rsa_key())),
        ("PS512", Signer::Rsa(rsa_key())),
        ("ES256", Signer::P256(&ec256)),
        ("ES384", Signer::P384(&ec384)),
    ];
    let mut tally = Tally::default();
    let mut valid = Vec::new();

    // Every algorithm, against every key (right key, wrong key, wrong type or curve,
    // a key pinned to another alg), JSON and non-JSON payloads.
    for (alg, signer) in &signers {
        for payload in [claims_bytes(), b"not json \x00\xff".to_vec()] {
            let t = token(&json!({"alg": alg, "typ": "JWT"}), &payload, signer);
            for k in keys {
                tally.check(&format!("{alg} token"), &t, k);
            }
            valid.push(t);
        }
    }
    assert!(tally.both_accept >= 16, "every algorithm verifies in both");

    // Tampered payload, tampered signature, the signature of another token.
    for t in &valid {
        let (h, rest) = t.split_once('.').unwrap();
        let (p, s) = rest.split_once('.').unwrap();
        let other_payload = b64::encode(b"{\"sub\":\"spiffe://evil/x\"}");
        let mut sig = b64::decode(s).unwrap();
        let last = sig.len() - 1;
        sig[last] ^= 1;
        for k in keys {
            tally.check("tampered payload", &format!("{h}.{other_payload}.{s}"), k);
            tally.check(
                "tampered signature",
                &format!("{h}.{p}.{}", b64::encode(&sig)),
                k,
            );
        }
    }

    // Algorithm confusion: HS256 keyed with the public key's JWK text and raw bytes;
    // `none` with an empty or arbitrary signature; the header alg switched after signing.
    let rsa_text = rsa_jwk(rsa_key(), "k").to_string();
    for secret in [rsa_text.as_bytes(), b"k".as_slice()] {
        let t = token(
            &json!({"alg": "HS256"}),
            &claims_bytes(),
            &Signer::Hs256(secret),
        );
        for k in keys {
            tally.check("HS256 alg confusion", &t, k);
        }
    }
    for sig in [vec![], vec![0u8]] {
        let t = token(&json!({"alg": "none"}), &claims_bytes(), &Signer::Raw(sig));
        for k in keys {
            tally.check("alg none", &t, k);
        }
    }
    let pkcs = token(&json!({"alg": "RS256"}), &claims_bytes(), &rsa_signer);
    let (_, rest) = pkcs.split_once('.').unwrap();
    let as_pss = format!("{}.{rest}", b64::encode(br#"{"alg":"PS256"}"#));
    tally.check("PKCS#1 signature relabelled PS256", &as_pss, &rsa);
    let ps = token(&json!({"alg": "PS256"}), &claims_bytes(), &rsa_signer);
    tally.check("PS256 on a key pinned to RS256", &ps, &rsa_pinned);

    // ECDSA edge cases: high-S (valid in JWS), r = s = 0, r or s = n, DER encoding.
    let es = token(
        &json!({"alg": "ES256"}),
        &claims_bytes(),
        &Signer::P256(&ec256),
    );
    let (input, s) = es.rsplit_once('.').unwrap();
    let sig = b64::decode(s).unwrap();
    let mut high_s = sig[..32].to_vec();
    high_s.extend(negate_mod_n(&sig[32..]));
    let mut r_is_n = P256_N.to_vec();
    r_is_n.extend(&sig[32..]);
    let mut s_is_n = sig[..32].to_vec();
    s_is_n.extend(P256_N);
    let der = p256::ecdsa::Signature::from_slice(&sig)
        .unwrap()
        .to_der()
        .as_bytes()
        .to_vec();
    for (what, bytes) in [
        ("ES256 high-S", high_s),
        ("ES256 r = s = 0", vec![0u8; 64]),
        ("ES256 r = n", r_is_n),
        ("ES256 s = n", s_is_n),
        ("ES256 DER signature", der),
    ] {
        tally.check(what, &format!("{input}.{}", b64::encode(&bytes)), &p256);
    }
    let high = format!(
        "{input}.{}",
        b64::encode(&{
            let mut v = sig[..32].to_vec();
            v.extend(negate_mod_n(&sig[32..]));
            v
        })
    );
    assert!(
        core_verdict(&high, &p256.core).is_ok(),
        "high-S is valid JWS"
    );

    // RSA signature with its leading zero octets stripped (shorter than the modulus).
    for _ in 0..2000 {
        let t = token(&json!({"alg": "RS256"}), &rand_bytes(16), &rsa_signer);
        let (input, s) = t.rsplit_once('.').unwrap();
        let sig = b64::decode(s).unwrap();
        if sig[0] == 0 {
            let short = format!("{input}.{}", b64::encode(&sig[1..]));
            tally.check("RSA signature shorter than the modulus", &short, &rsa);
            break;
        }
    }

    // Header rules core has and jsonwebtoken lacks (each signed correctly).
    let p256_signer = Signer::P256(&ec256);
    for (what, header) in [
        (
            "embedded jwk",
            json!({"alg": "ES256", "jwk": p256_jwk(&ec256, "k")}),
        ),
        (
            "jku",
            json!({"alg": "ES256", "jku": "https://attacker.example/jwks"}),
        ),
        ("typ at+jwt", json!({"alg": "ES256", "typ": "at+jwt"})),
        ("kid with a space", json!({"alg": "ES256", "kid": "a b"})),
        (
            "kid path traversal",
            json!({"alg": "ES256", "kid": "../../x"}),
        ),
        (
            "crit b64 false",
            json!({"alg": "ES256", "crit": ["b64"], "b64": false}),
        ),
        (
            "crit b64 true",
            json!({"alg": "ES256", "crit": ["b64"], "b64": true}),
        ),
        (
            "crit exp",
            json!({"alg": "ES256", "crit": ["exp"], "exp": 1}),
        ),
    ] {
        tally.check(what, &token(&header, &claims_bytes(), &p256_signer), &p256);
    }
    let dup_payload = sign_raw(
        r#"{"alg":"ES256"}"#,
        r#"{"scope":"read","scope":"admin"}"#,
        "ES256",
        &p256_signer,
    );
    tally.check("duplicate payload member", &dup_payload, &p256);
    let dup_header = sign_raw(
        r#"{"alg":"ES256","x":1,"x":2}"#,
        "{}",
        "ES256",
        &p256_signer,
    );
    tally.check("duplicate header member", &dup_header, &p256);

    // Fuzz-style: random mutations of valid tokens (seeded, so a failure reproduces).
    let mut rng = StdRng::seed_from_u64(0x6d65_7368_7061_7373);
    const B64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    for i in 0..3000 {
        let t = &valid[i % valid.len()];
        let mut b = t.as_bytes().to_vec();
        match rng.gen_range(0..6) {
            0 => {
                let at = rng.gen_range(0..b.len());
                b[at] = B64URL[rng.gen_range(0..B64URL.len())];
            }
            1 => {
                let at = rng.gen_range(0..b.len());
                b[at] ^= 1 << rng.gen_range(0..8);
            }
            2 => b.truncate(rng.gen_range(0..b.len())),
            3 => {
                let at = rng.gen_range(0..=b.len());
                b.insert(
                    at,
                    *[b'.', b'=', b'+', b'/', b' ']
                        .get(rng.gen_range(0..5))
                        .unwrap(),
                );
            }
            4 => {
                let at = rng.gen_range(0..b.len());
                b.remove(at);
            }
            _ => {
                // Splice: header and payload of one token, signature of another.
                let other = &valid[rng.gen_range(0..valid.len())];
                let (input, _) = t.rsplit_once('.').unwrap();
                let (_, sig) = other.rsplit_once('.').unwrap();
                b = format!("{input}.{sig}").into_bytes();
            }
        }
        let Ok(m) = String::from_utf8(b) else {
            continue;
        };
        for k in keys {
            tally.check("random mutation", &m, k);
        }
    }

    eprintln!(
        "both accept: {}, both reject: {}, core stricter: {:#?}",
        tally.both_accept, tally.both_reject, tally.stricter
    );
    // The named rules were each exercised (so the list stays honest).
    for (_, rule) in STRICTER_RULES {
        assert!(
            tally.stricter.contains_key(rule),
            "rule never exercised: {rule}"
        );
    }
}

fn rand_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::Rng::fill(&mut rand::thread_rng(), v.as_mut_slice());
    v
}
