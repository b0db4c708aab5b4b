//! Unit tests of the `[vault]` section.

use super::*;
use std::collections::HashMap;

fn parse(toml_text: &str) -> Result<VaultConfig, String> {
    toml::from_str(toml_text).map_err(|e| e.to_string())
}

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let m: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| m.get(k).cloned()
}

#[test]
fn defaults_match_the_documented_values() {
    let c = parse("address = \"http://127.0.0.1:8200\"").unwrap();
    assert_eq!(c.transit_mount, "transit");
    assert_eq!(c.key_name, "meshpass-participant");
    assert_eq!(c.publish_lead, Duration::from_secs(90));
    assert_eq!(c.key_refresh_interval, Duration::from_secs(30));
    assert_eq!(c.batch_max_size, 64);
    assert_eq!(c.batch_max_wait, Duration::from_millis(2));
    assert_eq!(c.batch_pipeline_depth, 3);
    assert_eq!(c.batch_pipeline_min_size, 12);
    assert_eq!(c.rsa_alg, RsaAlg::PS256);
    assert!(matches!(c.auth, AuthConfig::Token { token: None }));
}

#[test]
fn full_approle_config_parses_with_units() {
    let c = parse(
        r#"
        address = "https://vault:8200"
        namespace = "team"
        key_name = "k1"
        key_type = "rsa-3072"
        rsa_alg = "RS256"
        publish_lead = "90s"
        key_refresh_interval = 10
        batch_max_wait = "5ms"
        [auth]
        method = "approle"
        role_id = "r"
        secret_id_file = "/etc/sid"
        "#,
    )
    .unwrap();
    assert_eq!(c.key_type, Some(KeyType::Rsa3072));
    assert_eq!(c.rsa_alg, RsaAlg::RS256);
    assert_eq!(c.publish_lead, Duration::from_secs(90));
    assert_eq!(c.key_refresh_interval, Duration::from_secs(10));
    assert_eq!(c.batch_max_wait, Duration::from_millis(5));
    match c.auth {
        AuthConfig::Approle { mount, .. } => assert_eq!(mount, "approle"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_keys_are_refused_at_top_level_and_in_auth() {
    assert!(parse("adress = \"x\"").unwrap_err().contains("adress"));
    let e = parse("[auth]\nmethod = \"token\"\ntokn = \"x\"").unwrap_err();
    assert!(e.contains("tokn"), "{e}");
    let e = parse("[auth]\nmethod = \"ldap\"").unwrap_err();
    assert!(e.contains("ldap"), "{e}");
}

#[test]
fn environment_overrides_address_namespace_and_token() {
    let c =
        parse("address = \"https://file:1\"\n[auth]\nmethod = \"token\"\ntoken = \"f\"").unwrap();
    let r = c
        .resolved_with(&env_of(&[
            ("VAULT_ADDR", "https://env:2"),
            ("VAULT_NAMESPACE", "ns1"),
            ("VAULT_TOKEN", "from-env"),
        ]))
        .unwrap();
    assert_eq!(r.address.as_deref(), Some("https://env:2"));
    assert_eq!(r.namespace.as_deref(), Some("ns1"));
    match r.auth {
        AuthConfig::Token { token } => assert_eq!(token.unwrap().expose(), "from-env"),
        other => panic!("{other:?}"),
    }
    // Without the environment the file's values stay.
    let r = c.resolved_with(&env_of(&[])).unwrap();
    assert_eq!(r.address.as_deref(), Some("https://file:1"));
}

#[test]
fn validation_errors_name_the_field() {
    let cases: &[(&str, &str)] = &[
        ("", "vault.address"),
        ("address = \"ftp://x\"", "vault.address"),
        // Every API path is appended: it would land in the query.
        ("address = \"http://127.0.0.1:8200?x=1\"", "vault.address"),
        ("address = \"http://127.0.0.1:8200/#frag\"", "vault.address"),
        ("address = \"https://x\"\nbatch_max_size = 0", "vault.batch_max_size"),
        (
            "address = \"https://x\"\nbatch_pipeline_depth = 0",
            "vault.batch_pipeline_depth",
        ),
        (
            "address = \"https://x\"\nbatch_pipeline_depth = 33",
            "vault.batch_pipeline_depth",
        ),
        (
            "address = \"https://x\"\nbatch_pipeline_min_size = 0",
            "vault.batch_pipeline_min_size",
        ),
        ("address = \"https://x\"\nkey_name = \"a/b\"", "vault.key_name"),
        ("address = \"https://x\"\ntransit_mount = \"../x\"", "vault.transit_mount"),
        ("address = \"https://x\"\nca_cert = \"/nonexistent.pem\"", "vault.ca_cert"),
        ("address = \"https://x\"\n[auth]\nmethod = \"token\"", "vault.auth.token"),
        (
            "address = \"https://x\"\n[auth]\nmethod = \"approle\"\nrole_id = \"r\"\nsecret_id = \"s\"\nsecret_id_file = \"/f\"",
            "vault.auth.secret_id_file",
        ),
        (
            "address = \"https://x\"\n[auth]\nmethod = \"kubernetes\"\nrole = \"\"",
            "vault.auth.role",
        ),
    ];
    for (text, field) in cases {
        let c = parse(text).unwrap();
        let e = c
            .resolved_with(&env_of(&[("VAULT_TOKEN", "t")]))
            .err()
            .or_else(|| c.resolved_with(&env_of(&[])).err())
            .unwrap_or_else(|| panic!("{text:?} accepted"));
        assert_eq!(e.field, *field, "{text:?}: {e}");
    }
}

#[test]
fn plain_http_to_a_remote_vault_is_refused_unless_insecure_http() {
    let token = env_of(&[("VAULT_TOKEN", "t")]);
    let e = parse("address = \"http://vault.example:8200\"")
        .unwrap()
        .resolved_with(&token)
        .err()
        .unwrap();
    assert_eq!(e.field, "vault.address", "{e}");
    for ok in [
        "address = \"http://vault.example:8200\"\ninsecure_http = true",
        "address = \"http://127.0.0.1:8200\"",
        "address = \"http://[::1]:8200\"",
        "address = \"http://localhost:8200\"",
        "address = \"https://vault.example:8200\"",
    ] {
        assert!(parse(ok).unwrap().resolved_with(&token).is_ok(), "{ok}");
    }
}

#[test]
fn publish_lead_must_cover_the_verifiers_refresh_interval() {
    let token = env_of(&[("VAULT_TOKEN", "t")]);
    let base = "address = \"https://v:8200\"\nverifier_refresh_interval = \"20m\"";
    let e = parse(&format!("{base}\npublish_lead = \"5m\""))
        .unwrap()
        .resolved_with(&token)
        .err()
        .unwrap();
    assert_eq!(e.field, "vault.publish_lead", "{e}");
    assert!(e.to_string().contains("verifier_refresh_interval"), "{e}");
    assert!(parse(&format!("{base}\npublish_lead = \"21m\""))
        .unwrap()
        .resolved_with(&token)
        .is_ok());
}

#[test]
fn a_secret_that_is_not_a_string_is_refused_naming_its_key_not_its_value() {
    for (text, key) in [
        ("[auth]\nmethod = \"token\"\ntoken = 918273645", "token: "),
        (
            "[auth]\nmethod = \"approle\"\nrole_id = \"r\"\nsecret_id = 918273645",
            "secret_id: ",
        ),
    ] {
        let e = parse(text).unwrap_err();
        assert!(e.contains(key) && !e.contains("918273645"), "{text:?}: {e}");
    }
    let c = parse("[auth]\nmethod = \"token\"\ntoken = \"918273645\"").unwrap();
    match c.auth {
        AuthConfig::Token { token } => assert_eq!(token.unwrap().expose(), "918273645"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn durations_accept_units_and_refuse_garbage() {
    assert_eq!(parse_duration("2ms").unwrap(), Duration::from_millis(2));
    assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
    assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
    assert_eq!(
        parse_duration("30d").unwrap(),
        Duration::from_secs(30 * 86_400)
    );
    assert!(parse_duration("5 parsecs").is_err());
    assert!(parse_duration("-1s").is_err());
    // Never the value: it may be a secret put in the wrong place.
    let e = parse_duration("hvs.s3cret").unwrap_err();
    assert!(!e.contains("s3cret"), "{e}");
}
