//! Core's validation policy as configuration spells it (`ValidationPolicy` through
//! serde, then `check`): never panics; what deserialises serialises back to an equal
//! policy; a refusal names its field; and a policy that passes `check` admits what it
//! names (claims for each issuer and audience, the IDs of each pattern, any ID of a
//! trust domain when there are no patterns) and never an ID of another trust domain.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshpass_core::{SpiffeIdPattern, SubjectFormat, ValidationError, ValidationPolicy};
use serde_json::{json, Map, Value};

const NOW: u64 = 1_700_000_000;

fn claims(iss: &str, aud: &str, sub: &str) -> Map<String, Value> {
    let v = json!({"iss": iss, "aud": [aud], "sub": sub, "exp": NOW + 1, "iat": NOW});
    v.as_object().cloned().unwrap_or_default()
}

fuzz_target!(|data: &[u8]| {
    let Ok(policy) = serde_json::from_slice::<ValidationPolicy>(data) else {
        return;
    };
    let text = serde_json::to_string(&policy).expect("a policy serialises");
    let back: ValidationPolicy = serde_json::from_str(&text).expect("its own form parses");
    assert_eq!(back, policy);
    if let Err(e) = policy.check() {
        let msg = e.to_string();
        let field = msg.split_once(": ").map(|(f, _)| f).unwrap_or_default();
        assert!(
            field.starts_with("issuers") || field == "max_token_bytes",
            "{msg}"
        );
        return;
    }
    for ip in &policy.issuers {
        assert_eq!(policy.issuer(&ip.issuer), Some(ip));
        let Some(aud) = ip.audiences.first() else {
            panic!("check let an issuer without audiences through");
        };
        let Some(td) = ip.trust_domains.first() else {
            panic!("check let an issuer without trust domains through");
        };
        let admitted = |sub: &str| {
            let c = ip.check_claims(&claims(&ip.issuer, aud.as_str(), sub), NOW)?;
            ip.subject(&c)
        };
        match ip.subject_format {
            SubjectFormat::JwtSvid => {
                for p in &ip.id_patterns {
                    let id = match p {
                        SpiffeIdPattern::Exact(id) => id.to_string(),
                        SpiffeIdPattern::Prefix {
                            trust_domain,
                            prefix,
                        } => format!("spiffe://{trust_domain}{prefix}/x"),
                    };
                    if meshpass_core::SpiffeId::parse(&id).is_ok() {
                        assert_eq!(admitted(&id).map(|s| s.to_string()), Ok(id));
                    }
                }
                if ip.id_patterns.is_empty() {
                    let id = format!("spiffe://{td}/x");
                    assert_eq!(admitted(&id).map(|s| s.to_string()), Ok(id));
                }
                let outside = "spiffe://outside.invalid/x";
                if !ip
                    .trust_domains
                    .iter()
                    .any(|t| t.as_str() == "outside.invalid")
                {
                    assert_eq!(
                        admitted(outside),
                        Err(ValidationError::TrustDomainNotAllowed)
                    );
                }
            }
            SubjectFormat::KubernetesServiceAccount => {
                if ip.id_patterns.is_empty() {
                    let id = admitted("system:serviceaccount:shop:web");
                    assert_eq!(
                        id.map(|s| s.to_string()),
                        Ok(format!("spiffe://{td}/ns/shop/sa/web"))
                    );
                }
            }
        }
    }
});
