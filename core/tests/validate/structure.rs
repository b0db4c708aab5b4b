//! Compact serialisation: size cap, JSON/JWE forms, segments, canonical base64url, duplicate members.

use super::*;

#[test]
fn rejects_token_larger_than_the_cap_before_parsing() {
    let big = "a".repeat(9000);
    assert_eq!(
        policy().validate(&big, NOW, &lookup(KeySet::default()), &NO_BINDING),
        Err(ValidationError::TooLarge {
            len: 9000,
            max: 8192
        })
    );
    let mut p = policy();
    p.max_token_bytes = 100;
    let got = {
        let (k, keys) = p256_setup();
        let token = sign(&header("ES256", "ec-1"), &claims(), &Signer::P256(&k));
        p.validate(&token, NOW, &keys, &NO_BINDING)
    };
    assert!(matches!(
        got,
        Err(ValidationError::TooLarge { max: 100, .. })
    ));
}

#[test]
fn rejects_jws_json_serialization() {
    let token = r#"{"payload":"e30","protected":"eyJhbGciOiJFUzI1NiJ9","signature":"AAAA"}"#;
    assert_eq!(
        policy().validate(token, NOW, &lookup(KeySet::default()), &NO_BINDING),
        Err(ValidationError::JsonSerializationNotSupported)
    );
}

#[test]
fn rejects_jwe_compact_tokens() {
    let token = "eyJhbGciOiJSU0EtT0FFUCIsImVuYyI6IkEyNTZHQ00ifQ.a.b.c.d";
    assert_eq!(
        policy().validate(token, NOW, &lookup(KeySet::default()), &NO_BINDING),
        Err(ValidationError::JweNotSupported)
    );
}

#[test]
fn rejects_tokens_without_exactly_three_non_empty_segments() {
    let (k, keys) = p256_setup();
    let token = sign(&header("ES256", "ec-1"), &claims(), &Signer::P256(&k));
    let parts: Vec<&str> = token.split('.').collect();
    let cases = [
        String::new(),
        parts[0].to_owned(),
        format!("{}.{}", parts[0], parts[1]),
        format!("{token}.x"),
        format!("{}..{}", parts[0], parts[2]),
        format!(".{}.{}", parts[1], parts[2]),
        format!("{}.{}.", parts[0], parts[1]),
    ];
    for t in cases {
        assert!(
            matches!(
                policy().validate(&t, NOW, &keys, &NO_BINDING),
                Err(ValidationError::Malformed(_))
            ),
            "{t}"
        );
    }
}

#[test]
fn rejects_padded_and_non_canonical_base64url_in_any_segment() {
    let (k, keys) = p256_setup();
    let token = sign(&header("ES256", "ec-1"), &claims(), &Signer::P256(&k));
    assert!(policy().validate(&token, NOW, &keys, &NO_BINDING).is_ok());
    let parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let segment_names = ["header", "payload", "signature"];
    for (i, name) in segment_names.iter().enumerate() {
        let mut variants = vec![
            format!("{}=", parts[i]),
            format!("{}==", parts[i]),
            parts[i].replace('-', "+").replace('_', "/") + "+/",
            format!(" {}", parts[i]),
            format!("{}\n", parts[i]),
        ];
        // A non-canonical final character: same bytes, non-zero trailing bits.
        if let Some(last) = non_canonical_tail(&parts[i]) {
            variants.push(last);
        }
        for v in variants {
            let mut p = parts.clone();
            p[i] = v.clone();
            let got = policy().validate(&p.join("."), NOW, &keys, &NO_BINDING);
            assert_eq!(
                got,
                Err(ValidationError::Base64 { segment: name }),
                "{name}: {v:?}"
            );
        }
    }
}

/// Flips the lowest bit of the last character's 6-bit value when that bit is padding.
fn non_canonical_tail(seg: &str) -> Option<String> {
    const ALPHA: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    if seg.len() % 4 == 0 {
        return None;
    }
    let last = *seg.as_bytes().last()?;
    let idx = ALPHA.iter().position(|c| *c == last)?;
    let mut s = seg[..seg.len() - 1].to_owned();
    s.push(ALPHA[idx ^ 1] as char);
    Some(s)
}

#[test]
fn rejects_duplicate_member_names_in_header_and_payload() {
    let k = p256_key();
    let keys = lookup(key_set(&[p256_jwk(&k, "ec-1")]));
    let signer = Signer::P256(&k);
    let good_payload = claims().to_string();
    let dup_header = r#"{"alg":"ES256","kid":"ec-1","kid":"other"}"#;
    let token = sign_raw(dup_header, &good_payload, "ES256", &signer);
    assert!(matches!(
        policy().validate(&token, NOW, &keys, &NO_BINDING),
        Err(ValidationError::Json {
            segment: "header",
            ..
        })
    ));
    let dup_payload = format!(
        r#"{{"iss":"{ISSUER}","sub":"{SUBJECT}","sub":"spiffe://example.org/admin","aud":"{AUDIENCE}","exp":{}}}"#,
        NOW + 60
    );
    let token = sign_raw(
        r#"{"alg":"ES256","kid":"ec-1"}"#,
        &dup_payload,
        "ES256",
        &signer,
    );
    assert!(matches!(
        policy().validate(&token, NOW, &keys, &NO_BINDING),
        Err(ValidationError::Json {
            segment: "payload",
            ..
        })
    ));
    let nested = format!(
        r#"{{"iss":"{ISSUER}","sub":"{SUBJECT}","aud":"{AUDIENCE}","exp":{},"act":{{"sub":"a","sub":"b"}}}}"#,
        NOW + 60
    );
    let token = sign_raw(r#"{"alg":"ES256","kid":"ec-1"}"#, &nested, "ES256", &signer);
    assert!(matches!(
        policy().validate(&token, NOW, &keys, &NO_BINDING),
        Err(ValidationError::Json {
            segment: "payload",
            ..
        })
    ));
}

#[test]
fn rejects_header_or_payload_that_is_not_a_utf8_json_object() {
    let k = p256_key();
    let keys = lookup(key_set(&[p256_jwk(&k, "ec-1")]));
    let signer = Signer::P256(&k);
    let h = r#"{"alg":"ES256","kid":"ec-1"}"#;
    for payload in ["[1,2]", "\"x\"", "{", "{\"iss\":\"\u{fffd}\"} x"] {
        let token = sign_raw(h, payload, "ES256", &signer);
        assert!(matches!(
            policy().validate(&token, NOW, &keys, &NO_BINDING),
            Err(ValidationError::Json {
                segment: "payload",
                ..
            })
        ));
    }
    // Invalid UTF-8 bytes inside the payload.
    let input = format!(
        "{}.{}",
        b64::encode(h.as_bytes()),
        b64::encode(b"{\"iss\":\"\xff\"}")
    );
    let sig = signature_over(input.as_bytes(), "ES256", &signer);
    let token = format!("{input}.{}", b64::encode(&sig));
    assert!(matches!(
        policy().validate(&token, NOW, &keys, &NO_BINDING),
        Err(ValidationError::Json {
            segment: "payload",
            ..
        })
    ));
    let token = sign_raw("[\"ES256\"]", &claims().to_string(), "ES256", &signer);
    assert!(matches!(
        policy().validate(&token, NOW, &keys, &NO_BINDING),
        Err(ValidationError::Json {
            segment: "header",
            ..
        })
    ));
}
