//! JSON Web Keys (RFC 7517/7518) for verifying subject tokens.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::alg::Algorithm;
use crate::error::ValidationError;

/// A public verification key.
#[derive(Debug, Clone)]
pub enum PublicKey {
    /// RSA, at least 2048 bits.
    Rsa(rsa::RsaPublicKey),
    /// ECDSA on P-256.
    P256(p256::ecdsa::VerifyingKey),
    /// ECDSA on P-384.
    P384(p384::ecdsa::VerifyingKey),
    /// ECDSA on P-521 (for ES512).
    P521(ecdsa::VerifyingKey<p521::NistP521>),
}

impl PublicKey {
    /// The JWK `kty` of this key.
    pub fn kty(&self) -> &'static str {
        match self {
            PublicKey::Rsa(_) => "RSA",
            PublicKey::P256(_) | PublicKey::P384(_) | PublicKey::P521(_) => "EC",
        }
    }

    /// Whether the key type and curve fit `alg` (ignoring any `alg` pinned by the JWK).
    pub fn fits(&self, alg: Algorithm) -> bool {
        match self {
            PublicKey::Rsa(_) => alg.is_rsa(),
            PublicKey::P256(_) => alg == Algorithm::ES256,
            PublicKey::P384(_) => alg == Algorithm::ES384,
            PublicKey::P521(_) => alg == Algorithm::ES512,
        }
    }
}

/// One usable key from a JWKS.
#[derive(Debug, Clone)]
pub struct Jwk {
    /// `kid`, if any.
    pub kid: Option<String>,
    /// `alg`, if the key pins one.
    pub alg: Option<Algorithm>,
    /// The key material.
    pub key: PublicKey,
}

impl Jwk {
    /// Whether this key may verify a token whose header says `alg` (kty/crv/alg fit;
    /// `use`/`key_ops` were checked at parse time).
    pub fn fits(&self, alg: Algorithm) -> bool {
        self.key.fits(alg) && self.alg.is_none_or(|pinned| pinned == alg)
    }

    /// Parses and checks one JWK object (the same rules as [`KeySet::parse`] applies to
    /// each member of `keys`). The error says why the key is not usable.
    pub fn from_json(obj: &Map<String, Value>) -> Result<Jwk, String> {
        parse_jwk(obj)
    }
}

/// A JWKS member that was not kept, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRejection {
    /// Position in the `keys` array.
    pub index: usize,
    /// The key's `kid`, if it had a readable one.
    pub kid: Option<String>,
    /// Why it was dropped (e.g. "RSA key shorter than 2048 bits").
    pub reason: String,
}

/// Why a whole JWKS document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    /// Not a JSON object, or duplicate member names.
    #[error("JWKS is not a valid JSON object: {0}")]
    Json(String),
    /// No `keys` array.
    #[error("JWKS has no keys array")]
    NoKeysArray,
    /// Larger than the configured cap.
    #[error("JWKS is larger than {0} bytes")]
    TooLarge(usize),
}

/// Default cap on the size of a JWKS document, in bytes.
pub const DEFAULT_MAX_JWKS_BYTES: usize = 256 * 1024;
/// At most this many members of `keys` are considered; the rest are rejected.
pub const MAX_KEYS: usize = 100;
/// Longest accepted `kid`, in bytes.
pub const MAX_KID_BYTES: usize = 256;
/// Smallest accepted RSA modulus, in bits.
pub const MIN_RSA_BITS: usize = 2048;
/// Largest accepted RSA modulus, in bits (bounds verification cost).
pub const MAX_RSA_BITS: usize = 8192;

/// Whether `kid` is a sane key id: 1..=256 bytes of `[A-Za-z0-9._~:+/=@-]` (covers
/// base64, base64url, hex, UUIDs, thumbprints and `name:version` ids) and no `..`.
/// Anything else (control characters, whitespace, quotes, path traversal, oversize)
/// is refused before any lookup.
pub fn is_valid_kid(kid: &str) -> bool {
    !kid.is_empty()
        && kid.len() <= MAX_KID_BYTES
        && kid.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'.' | b'_' | b'~' | b':' | b'+' | b'/' | b'=' | b'@' | b'-'
                )
        })
        && !kid.contains("..")
}

/// JWK members that only a private (or symmetric) key has.
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

fn opt_str<'a>(obj: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, String> {
    match obj.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("{name} is not a string")),
    }
}

fn req_b64(obj: &Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    let s = opt_str(obj, name)?.ok_or_else(|| format!("{name} is missing"))?;
    crate::b64::decode(s).map_err(|_| format!("{name} is not strict base64url"))
}

fn parse_jwk(obj: &Map<String, Value>) -> Result<Jwk, String> {
    let kid = match opt_str(obj, "kid")? {
        Some(k) if !is_valid_kid(k) => return Err("kid is not a valid key id".into()),
        k => k.map(str::to_owned),
    };
    if let Some(m) = PRIVATE_MEMBERS.iter().find(|m| obj.contains_key(**m)) {
        return Err(format!("key has the private member {m:?}"));
    }
    if let Some(u) = opt_str(obj, "use")? {
        if u != "sig" {
            return Err("use is not \"sig\"".into());
        }
    }
    if let Some(ops) = obj.get("key_ops") {
        let ops = ops.as_array().ok_or("key_ops is not an array")?;
        let mut seen = Vec::with_capacity(ops.len());
        for op in ops {
            let op = op.as_str().ok_or("key_ops has a non-string member")?;
            if seen.contains(&op) {
                return Err("key_ops repeats a value".into());
            }
            seen.push(op);
        }
        if !seen.contains(&"verify") {
            return Err("key_ops does not contain \"verify\"".into());
        }
    }
    let alg = match opt_str(obj, "alg")? {
        None => None,
        Some(a) => {
            Some(Algorithm::parse(a).map_err(|_| "alg is not an accepted signature algorithm")?)
        }
    };
    let key = match opt_str(obj, "kty")? {
        Some("RSA") => parse_rsa(obj)?,
        Some("EC") => parse_ec(obj)?,
        Some(_) => return Err("kty is not RSA or EC".into()),
        None => return Err("kty is missing".into()),
    };
    if let Some(a) = alg {
        if !key.fits(a) {
            return Err(format!("alg {a} does not fit the key type or curve"));
        }
    }
    Ok(Jwk { kid, alg, key })
}

fn parse_rsa(obj: &Map<String, Value>) -> Result<PublicKey, String> {
    let n = req_b64(obj, "n")?;
    let e = req_b64(obj, "e")?;
    // RFC 7518 §6.3.1.1 notes some libraries prefix a zero octet; tolerate that.
    let n = strip_leading_zeros(&n);
    let e = strip_leading_zeros(&e);
    // After stripping, the first byte is non-zero (or `n` is empty: 0 bits, refused below).
    let bits = n
        .first()
        .map_or(0, |b| n.len() * 8 - b.leading_zeros() as usize);
    if bits < MIN_RSA_BITS {
        return Err(format!("RSA key shorter than {MIN_RSA_BITS} bits"));
    }
    if bits > MAX_RSA_BITS {
        return Err(format!("RSA key longer than {MAX_RSA_BITS} bits"));
    }
    if n.last().is_some_and(|b| b & 1 == 0) {
        return Err("RSA modulus is even".into());
    }
    if e.len() > 4 {
        return Err("RSA exponent is 2^32 or more".into());
    }
    let e_val = e.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    if e_val < 3 || e_val & 1 == 0 {
        return Err("RSA exponent must be odd and at least 3".into());
    }
    let key = rsa::RsaPublicKey::new_with_max_size(
        rsa::BigUint::from_bytes_be(n),
        rsa::BigUint::from(e_val),
        MAX_RSA_BITS,
    )
    .map_err(|_| "RSA key is invalid")?;
    Ok(PublicKey::Rsa(key))
}

fn strip_leading_zeros(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    &b[start..]
}

fn parse_ec(obj: &Map<String, Value>) -> Result<PublicKey, String> {
    let crv = opt_str(obj, "crv")?.ok_or("crv is missing")?;
    let x = req_b64(obj, "x")?;
    let y = req_b64(obj, "y")?;
    const OFF_CURVE: &str = "EC point is not on the curve";
    match crv {
        "P-256" => {
            let sec1 = uncompressed_point(&x, &y, 32)?;
            p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1)
                .map(PublicKey::P256)
                .map_err(|_| OFF_CURVE.into())
        }
        "P-384" => {
            let sec1 = uncompressed_point(&x, &y, 48)?;
            p384::ecdsa::VerifyingKey::from_sec1_bytes(&sec1)
                .map(PublicKey::P384)
                .map_err(|_| OFF_CURVE.into())
        }
        "P-521" => {
            let sec1 = uncompressed_point(&x, &y, 66)?;
            ecdsa::VerifyingKey::<p521::NistP521>::from_sec1_bytes(&sec1)
                .map(PublicKey::P521)
                .map_err(|_| OFF_CURVE.into())
        }
        _ => Err("crv is not P-256, P-384 or P-521".into()),
    }
}

/// The SEC1 uncompressed encoding `04 ‖ x ‖ y`. Coordinates must be exactly the field
/// size (RFC 7518 §6.2.1.2); decoding it then checks the point is on the curve and not
/// the identity.
fn uncompressed_point(x: &[u8], y: &[u8], len: usize) -> Result<Vec<u8>, String> {
    if x.len() != len {
        return Err(format!("x is not {len} bytes long"));
    }
    if y.len() != len {
        return Err(format!("y is not {len} bytes long"));
    }
    let mut out = Vec::with_capacity(1 + 2 * len);
    out.push(0x04);
    out.extend_from_slice(x);
    out.extend_from_slice(y);
    Ok(out)
}

/// The usable keys of one issuer.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<Jwk>,
}

impl KeySet {
    /// Parses a JWKS document, keeping usable signing keys and reporting the rest
    /// (EC points not on the curve, RSA under 2048 bits or bad exponent, duplicate `kid`,
    /// `use` other than `sig`, `key_ops` without `verify`, private members, unknown kty).
    /// The document may be at most [`DEFAULT_MAX_JWKS_BYTES`].
    pub fn parse(json: &[u8]) -> Result<(KeySet, Vec<KeyRejection>), JwksError> {
        Self::parse_with_limit(json, DEFAULT_MAX_JWKS_BYTES)
    }

    /// [`KeySet::parse`] with an explicit size cap in bytes.
    pub fn parse_with_limit(
        json: &[u8],
        max_bytes: usize,
    ) -> Result<(KeySet, Vec<KeyRejection>), JwksError> {
        if json.len() > max_bytes {
            return Err(JwksError::TooLarge(max_bytes));
        }
        let doc = crate::json::parse_object(json).map_err(|e| JwksError::Json(e.to_string()))?;
        let Some(Value::Array(members)) = doc.get("keys") else {
            return Err(JwksError::NoKeysArray);
        };
        let mut parsed: Vec<(usize, Jwk)> = Vec::new();
        let mut rejected = Vec::new();
        for (index, member) in members.iter().enumerate() {
            let readable_kid = member
                .get("kid")
                .and_then(Value::as_str)
                .filter(|k| is_valid_kid(k))
                .map(str::to_owned);
            let result = if index >= MAX_KEYS {
                Err(format!("more than {MAX_KEYS} keys"))
            } else {
                match member {
                    Value::Object(obj) => parse_jwk(obj),
                    _ => Err("key is not a JSON object".into()),
                }
            };
            match result {
                Ok(jwk) => parsed.push((index, jwk)),
                Err(reason) => rejected.push(KeyRejection {
                    index,
                    kid: readable_kid,
                    reason,
                }),
            }
        }
        // Two usable keys with one kid make the lookup ambiguous: drop all of them
        // rather than let array order decide.
        let mut kid_count: HashMap<&str, usize> = HashMap::new();
        for (_, jwk) in &parsed {
            if let Some(kid) = jwk.kid.as_deref() {
                *kid_count.entry(kid).or_default() += 1;
            }
        }
        let dup: Vec<String> = kid_count
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|(k, _)| k.to_owned())
            .collect();
        let mut keys = Vec::with_capacity(parsed.len());
        for (index, jwk) in parsed {
            match jwk.kid.as_ref().filter(|k| dup.contains(k)) {
                Some(kid) => rejected.push(KeyRejection {
                    index,
                    kid: Some(kid.clone()),
                    reason: "duplicate kid".into(),
                }),
                None => keys.push(jwk),
            }
        }
        rejected.sort_by_key(|r| r.index);
        Ok((KeySet { keys }, rejected))
    }

    /// Builds a set from already-parsed keys.
    pub fn from_keys(keys: Vec<Jwk>) -> Self {
        KeySet { keys }
    }

    /// The key for a token: by `kid` when it has one; without `kid`, only when exactly
    /// one key fits `alg`. The chosen key must fit `alg`.
    ///
    /// An unknown `kid` is reported as [`ValidationError::UnknownKeyId`] with an empty
    /// `issuer` (the set does not know it; [`crate::ValidationPolicy::validate`] fills
    /// it in).
    pub fn select(&self, kid: Option<&str>, alg: Algorithm) -> Result<&Jwk, ValidationError> {
        match kid {
            Some(kid) => {
                if !is_valid_kid(kid) {
                    return Err(ValidationError::BadKeyId);
                }
                let mut with_kid = self.keys.iter().filter(|k| k.kid.as_deref() == Some(kid));
                let Some(first) = with_kid.next() else {
                    return Err(ValidationError::UnknownKeyId {
                        issuer: String::new(),
                        kid: kid.to_owned(),
                    });
                };
                // `from_keys` may hold duplicates; among them, only one may fit.
                let mut fitting = std::iter::once(first)
                    .chain(with_kid)
                    .filter(|k| k.fits(alg));
                match (fitting.next(), fitting.next()) {
                    (Some(k), None) => Ok(k),
                    (None, _) => Err(ValidationError::KeyAlgorithmMismatch(alg.as_str())),
                    (Some(_), Some(_)) => Err(ValidationError::AmbiguousKey),
                }
            }
            None => {
                let mut fitting = self.keys.iter().filter(|k| k.fits(alg));
                match (fitting.next(), fitting.next()) {
                    (Some(k), None) => Ok(k),
                    _ => Err(ValidationError::AmbiguousKey),
                }
            }
        }
    }

    /// The keys.
    pub fn keys(&self) -> &[Jwk] {
        &self.keys
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}
