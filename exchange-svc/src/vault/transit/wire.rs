//! The `transit/sign` documents, written and read directly: the request body without a
//! `Value` tree per input, the answer into borrowed fields (no tree of every item).

use std::borrow::Cow;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Deserialize;
use serde_json::Value;

use super::super::keys::jws_signature;
use crate::signer::{SignError, SigningAlg};

/// The hash of a JWS signing input, computed here and sent with `prehashed=true`:
/// OpenBao then decodes and hashes 32 or 48 bytes per signature instead of the whole
/// token (≈ 600 bytes). The signature is the same; OpenBao's CPU per minted token fell
/// by about 9 % (bench/notes.md). Ed25519 signs the message itself: no prehash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Prehash {
    /// SHA-256: ES256, PS256, RS256.
    Sha256,
    /// SHA-384: ES384.
    Sha384,
}

impl Prehash {
    /// The hash `alg` signs over, or `None` when the message itself is signed.
    pub(super) fn for_alg(alg: SigningAlg) -> Option<Prehash> {
        match alg {
            SigningAlg::ES256 | SigningAlg::PS256 | SigningAlg::RS256 => Some(Prehash::Sha256),
            SigningAlg::ES384 => Some(Prehash::Sha384),
            SigningAlg::EdDSA => None,
        }
    }

    /// Its `hash_algorithm` name in Vault.
    pub(super) fn vault_name(self) -> &'static str {
        match self {
            Prehash::Sha256 => "sha2-256",
            Prehash::Sha384 => "sha2-384",
        }
    }

    /// The digest of every input, in order.
    pub(super) fn digests(self, inputs: &[Vec<u8>]) -> Vec<Vec<u8>> {
        use sha2::Digest as _;
        inputs
            .iter()
            .map(|i| match self {
                Prehash::Sha256 => sha2::Sha256::digest(i).to_vec(),
                Prehash::Sha384 => sha2::Sha384::digest(i).to_vec(),
            })
            .collect()
    }
}

/// The request body: the object `params` (key version, algorithms) with `input` (one
/// input) or `batch_input` (several). Standard base64 needs no JSON escaping.
pub(super) fn sign_body(params: &Value, inputs: &[Vec<u8>]) -> Vec<u8> {
    let mut out = params.to_string();
    // Reopen the object: `params` always holds at least `key_version`.
    if out.ends_with('}') {
        out.pop();
    }
    let b64: usize = inputs.iter().map(|i| i.len().div_ceil(3) * 4 + 12).sum();
    out.reserve(b64 + 24);
    out.push_str(if out.len() > 1 { "," } else { "" });
    if let [one] = inputs {
        out.push_str("\"input\":\"");
        STANDARD.encode_string(one, &mut out);
        out.push_str("\"}");
    } else {
        out.push_str("\"batch_input\":[");
        for (k, i) in inputs.iter().enumerate() {
            out.push_str(if k == 0 { "{" } else { ",{" });
            // Echoed in the item's answer: a result is its caller's only at its place.
            out.push_str("\"reference\":\"");
            out.push_str(&k.to_string());
            out.push_str("\",\"input\":\"");
            STANDARD.encode_string(i, &mut out);
            out.push_str("\"}");
        }
        out.push_str("]}");
    }
    out.into_bytes()
}

/// The fields of a `transit/sign` answer the signer reads (others are ignored).
#[derive(Deserialize)]
struct Answer<'a> {
    #[serde(borrow, default)]
    data: Option<Data<'a>>,
}

#[derive(Deserialize)]
struct Data<'a> {
    #[serde(borrow, default)]
    signature: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    batch_results: Option<Vec<Item<'a>>>,
}

#[derive(Deserialize)]
struct Item<'a> {
    #[serde(borrow, default)]
    signature: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    error: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    reference: Option<Cow<'a, str>>,
}

/// Turns a `transit/sign` answer (its body) for `n` inputs into one result per input:
/// the plain `signature` when `n == 1`, else `batch_results`. A batch answers 200 even
/// when items fail, so every item is judged on its own: an item error fails that item
/// only. An answer that does not parse as that shape (not JSON, or a field of another
/// type) fails every input. A batch item must echo its place as `reference` (sent by
/// [`sign_body`]; Vault 1.11+ and every OpenBao): OpenBao keeps the input's order, but
/// an intermediary that reordered the array would hand one caller the signature over
/// another's input, and only the first signature of a batch is verified.
pub fn sign_results(
    answer: &[u8],
    n: usize,
    version: u64,
    sig_len: usize,
) -> Vec<Result<String, SignError>> {
    let check = |sig: Option<&str>| -> Result<String, SignError> {
        let sig = sig.ok_or_else(|| SignError::Failed("no signature in answer".into()))?;
        jws_signature(sig, version, sig_len).map_err(SignError::Failed)
    };
    let fail = |why: &str| -> Vec<Result<String, SignError>> {
        (0..n).map(|_| Err(SignError::Failed(why.into()))).collect()
    };
    let Ok(parsed) = serde_json::from_slice::<Answer<'_>>(answer) else {
        return fail("unexpected transit/sign answer");
    };
    let data = parsed.data.as_ref();
    let batch = data.and_then(|d| d.batch_results.as_ref());
    if n == 1 && batch.is_none() {
        return vec![check(data.and_then(|d| d.signature.as_deref()))];
    }
    let Some(results) = batch.filter(|r| r.len() == n) else {
        return fail("batch answer does not hold one result per input");
    };
    results
        .iter()
        .enumerate()
        .map(|(k, item)| match item.error.as_deref() {
            Some(err) if !err.is_empty() => Err(SignError::Failed(format!(
                "transit refused batch item: {err}"
            ))),
            _ if item.reference.as_deref() != Some(k.to_string().as_str()) => {
                Err(SignError::Unavailable(format!(
                    "batch item {k} of the transit answer is not the answer to input {k} (its reference is {:?})",
                    item.reference
                )))
            }
            _ => check(item.signature.as_deref()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;

    #[test]
    fn the_written_body_is_the_json_the_value_tree_gave() {
        let params = json!({"key_version": 3, "marshaling_algorithm": "jws"});
        let one = vec![b"a.b".to_vec()];
        let v: Value = serde_json::from_slice(&sign_body(&params, &one)).unwrap();
        assert_eq!(
            v,
            json!({"key_version": 3, "marshaling_algorithm": "jws", "input": STANDARD.encode("a.b")})
        );
        let many = vec![b"x".to_vec(), b"yz?>".to_vec(), Vec::new()];
        let v: Value = serde_json::from_slice(&sign_body(&params, &many)).unwrap();
        let items: Vec<Value> = many
            .iter()
            .enumerate()
            .map(|(k, i)| json!({"reference": k.to_string(), "input": STANDARD.encode(i)}))
            .collect();
        assert_eq!(
            v,
            json!({"key_version": 3, "marshaling_algorithm": "jws", "batch_input": items})
        );
    }

    #[test]
    fn every_algorithm_but_ed25519_sends_the_digest_of_its_signing_input() {
        use sha2::Digest as _;
        let inputs = vec![b"header.payload".to_vec(), Vec::new()];
        for alg in [SigningAlg::ES256, SigningAlg::PS256, SigningAlg::RS256] {
            let hash = Prehash::for_alg(alg).unwrap();
            assert_eq!(hash.vault_name(), "sha2-256");
            let d = hash.digests(&inputs);
            assert_eq!(d[0], sha2::Sha256::digest(b"header.payload").to_vec());
            assert_eq!(d[1], sha2::Sha256::digest(b"").to_vec());
        }
        let es384 = Prehash::for_alg(SigningAlg::ES384).unwrap();
        assert_eq!(es384.vault_name(), "sha2-384");
        assert_eq!(es384.digests(&inputs)[0].len(), 48);
        assert_eq!(Prehash::for_alg(SigningAlg::EdDSA), None);
    }

    #[test]
    fn odd_answers_fail_closed_per_item() {
        let sig = format!("vault:v1:{}", STANDARD.encode([7u8; 64]));
        let a = json!({"data": {"batch_results": [
            {"signature": sig, "reference": "0"}, {"signature": sig, "error": "no", "reference": "1"},
            {"error": "", "reference": "2"},
        ]}});
        let r = sign_results(&serde_json::to_vec(&a).unwrap(), 3, 1, 64);
        assert!(r[0].is_ok() && r[1].is_err() && r[2].is_err(), "{r:?}");
        // An item not at its own place, or without its place, is refused.
        let moved = json!({"data": {"batch_results": [
            {"signature": sig, "reference": "0"}, {"signature": sig, "reference": "2"},
            {"signature": sig, "reference": "1"}, {"signature": sig},
        ]}});
        let r = sign_results(&serde_json::to_vec(&moved).unwrap(), 4, 1, 64);
        assert!(
            r[0].is_ok()
                && r[1..]
                    .iter()
                    .all(|r| matches!(r, Err(SignError::Unavailable(_)))),
            "{r:?}"
        );
        // A field of another type fails the whole answer, closed.
        let odd = json!({"data": {"batch_results": [{"signature": sig}, {"signature": 5}]}});
        let r = sign_results(&serde_json::to_vec(&odd).unwrap(), 2, 1, 64);
        assert!(r.iter().all(|r| r.is_err()), "{r:?}");
        let single = json!({"data": {"signature": sig}});
        let r = sign_results(&serde_json::to_vec(&single).unwrap(), 1, 1, 64);
        assert!(r[0].is_ok());
        assert!(sign_results(b"not json", 2, 1, 64)
            .iter()
            .all(|r| r.is_err()));
        assert!(sign_results(b"{\"data\":{\"batch_results\":7}}", 2, 1, 64)
            .iter()
            .all(|r| r.is_err()));
    }
}
