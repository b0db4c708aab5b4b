//! `meshpassctl` end to end against a running service (token endpoint and management
//! API on loopback sockets, SQLite store, real OpenBao for the keys): tables, JSON,
//! apply, export → edit → import round trip, keys, audit, and the exit codes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use meshpass_testkit::OpenBao;
use serde_json::{json, Value};
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manages_mappings_keys_and_audit_end_to_end_with_documented_exit_codes() {
    std::env::remove_var("VAULT_ADDR");
    std::env::remove_var("VAULT_TOKEN");
    let bao = OpenBao::start();
    bao.enable_transit();
    bao.create_transit_key("meshpass-participant", "ecdsa-p256");
    let dir = tempfile::tempdir().unwrap();
    let issuer = Issuer(p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng));
    let cfg = config(dir.path(), &issuer, &bao);
    let server = serve(&cfg).await;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, issuer.token(ADMIN)).unwrap();
    let ctl = Ctl {
        server: server.clone(),
        token_file,
    };

    // Table by default, JSON on request.
    let (code, out, err) = ctl.run(&["mappings", "list"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("NAME"), "{out}");
    assert!(out.contains("web-to-orders"), "{out}");

    let file = dir.path().join("inv.yaml");
    std::fs::write(&file, "name: inv\nsubject: spiffe://cluster.local/ns/shop/*\nresource: inventory\nparticipant: acme\nscopes: [read]\nttl_secs: 300\n").unwrap();
    let (code, out, err) = ctl
        .run(&["mappings", "apply", "-f", file.to_str().unwrap()])
        .await;
    assert_eq!((code, out.trim()), (0, "mapping inv created"), "{err}");
    let (code, out, _) = ctl.run(&["mappings", "get", "inv", "-o", "json"]).await;
    assert_eq!(code, 0);
    let m: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(m["resource"], "inventory");

    // export → edit → import --dry-run → import.
    let (code, exported, _) = ctl.run(&["export"]).await;
    assert_eq!(code, 0);
    assert!(exported.contains("name: inv"), "{exported}");
    let edited = exported.replace("ttl_secs: 300", "ttl_secs: 120");
    assert_ne!(edited, exported);
    let doc = dir.path().join("doc.yaml");
    std::fs::write(&doc, &edited).unwrap();
    let (code, out, err) = ctl
        .run(&["import", "--dry-run", "-f", doc.to_str().unwrap()])
        .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("change") && out.contains("mappings/inv"),
        "{out}"
    );
    assert!(out.contains("dry run: nothing applied"), "{out}");
    let (_, out, _) = ctl.run(&["mappings", "get", "inv", "-o", "json"]).await;
    assert!(
        out.contains("\"ttl_secs\": 300"),
        "dry run changed nothing: {out}"
    );
    let (code, out, err) = ctl.run(&["import", "-f", doc.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("applied"), "{out}");
    let (_, out, _) = ctl.run(&["mappings", "get", "inv", "-o", "yaml"]).await;
    assert!(out.contains("ttl_secs: 120"), "{out}");

    // Conditional writes: the ETag of what was read, a stale one refused (exit 4).
    let (code, tag, err) = ctl.run(&["mappings", "get", "inv", "--etag"]).await;
    assert_eq!(code, 0, "{err}");
    let tag = tag.trim().to_string();
    assert!(tag.starts_with('"') && tag.len() > 2, "{tag}");
    let edit = dir.path().join("inv2.yaml");
    let inv = |ttl: u32| {
        format!("name: inv\nsubject: spiffe://cluster.local/ns/shop/*\nresource: inventory\nparticipant: acme\nscopes: [read]\nttl_secs: {ttl}\n")
    };
    std::fs::write(&edit, inv(200)).unwrap();
    let f = edit.to_str().unwrap();
    let (code, out, err) = ctl
        .run(&["mappings", "apply", "-f", f, "--if-match", &tag])
        .await;
    assert_eq!((code, out.trim()), (0, "mapping inv configured"), "{err}");
    std::fs::write(&edit, inv(250)).unwrap();
    let (code, _, err) = ctl
        .run(&["mappings", "apply", "-f", f, "--if-match", &tag])
        .await;
    assert_eq!(code, 4, "a stale ETag: {err}");
    assert_eq!(
        ctl.run(&["mappings", "delete", "inv", "--if-match", &tag])
            .await
            .0,
        4
    );
    let (_, out, _) = ctl.run(&["mappings", "get", "inv", "-o", "json"]).await;
    assert!(
        out.contains("\"ttl_secs\": 200"),
        "the stale writes changed nothing: {out}"
    );
    // The current tag, given bare (unquoted), is accepted.
    let (_, current, _) = ctl.run(&["mappings", "get", "inv", "--etag"]).await;
    let bare = current.trim().trim_matches('"').to_string();
    let (code, _, err) = ctl
        .run(&["mappings", "apply", "-f", f, "--if-match", &bare])
        .await;
    assert_eq!(code, 0, "{err}");
    std::fs::write(
        &edit,
        format!(
            "[{}, {}]",
            serde_json::to_string(&serde_yaml_like(&inv(1))).unwrap(),
            serde_json::to_string(&serde_yaml_like(&inv(2))).unwrap()
        ),
    )
    .unwrap();
    let (code, _, err) = ctl
        .run(&["mappings", "apply", "-f", f, "--if-match", &bare])
        .await;
    assert_eq!(code, 2, "one ETag, two mappings: {err}");

    // Keys.
    let (code, out, err) = ctl.run(&["keys", "status"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("meshpass-participant:v1"), "{out}");
    let (code, out, _) = ctl.run(&["keys", "rotate", "-o", "json"]).await;
    assert_eq!(code, 0);
    let k: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(k["versions"].as_array().unwrap().len(), 2);
    // v1 may have signed tokens that are still live: retiring it is a conflict (exit 4);
    // retiring the signing version is invalid input, by field (exit 5).
    let (code, _, err) = ctl.run(&["keys", "retire", "--below", "2"]).await;
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("may be live"), "{err}");
    let (code, _, err) = ctl.run(&["keys", "retire", "--below", "9"]).await;
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("below"), "{err}");
    let (code, out, _) = ctl.run(&["keys", "status", "-o", "json"]).await;
    assert_eq!(code, 0);
    let k: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        k["versions"].as_array().unwrap().len(),
        2,
        "nothing retired"
    );

    // Stats: a table by default, the API's document as JSON.
    let (code, out, err) = ctl.run(&["stats"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("MAPPING") && out.contains("SUBJECT"), "{out}");
    let (code, out, _) = ctl.run(&["stats", "-o", "json"]).await;
    assert_eq!(code, 0);
    let st: Value = serde_json::from_str(&out).unwrap();
    assert!(
        st["by_mapping"].is_array() && st["top_subjects"].is_array(),
        "{st}"
    );

    // Audit.
    let (code, out, _) = ctl.run(&["audit", "tail", "-n", "50"]).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("mapping.create") && out.contains("keys.rotate") && out.contains(ADMIN),
        "{out}"
    );
    assert!(
        !out.contains("keys.retire"),
        "a refused retirement is not a change: {out}"
    );

    // A mapping that is the only grant of a scope row stays, and the refusal says why.
    let row = dir.path().join("row.yaml");
    std::fs::write(
        &row,
        "resource: inventory\nscope: read\nclaims: {tier: 1}\n",
    )
    .unwrap();
    let (code, out, err) = ctl
        .run(&["scopes", "apply", "-f", row.to_str().unwrap()])
        .await;
    assert_eq!(
        (code, out.trim()),
        (0, "scope inventory read created"),
        "{err}"
    );
    let (code, _, err) = ctl.run(&["mappings", "delete", "inv"]).await;
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("conflict: scope row inventory/read is granted only by this mapping (inv)"),
        "{err}"
    );
    let (code, _, err) = ctl.run(&["scopes", "delete", "inventory", "read"]).await;
    assert_eq!(code, 0, "{err}");
    // `.` and `..` name nothing: refused, never sent as another path (it would list).
    for dots in [".", ".."] {
        let (code, out, err) = ctl.run(&["mappings", "get", dots]).await;
        assert_eq!((code, out.as_str()), (2, ""), "{dots}: {err}");
    }

    // Exit codes a script can rely on.
    assert_eq!(ctl.run(&["mappings", "delete", "inv"]).await.0, 0);
    assert_eq!(
        ctl.run(&["mappings", "delete", "inv"]).await.0,
        3,
        "not found"
    );
    std::fs::write(
        &file,
        "name: bad\nsubject: not-spiffe\nresource: inventory\nparticipant: acme\nttl_secs: 300\n",
    )
    .unwrap();
    let (code, _, err) = ctl
        .run(&["mappings", "apply", "-f", file.to_str().unwrap()])
        .await;
    assert_eq!(code, 5, "invalid: {err}");
    assert!(err.contains("subject"), "{err}");
    std::fs::write(
        dir.path().join("token"),
        issuer.token("spiffe://cluster.local/ns/shop/sa/web"),
    )
    .unwrap();
    assert_eq!(ctl.run(&["mappings", "list"]).await.0, 6, "not allowed");
    let nobody = Ctl {
        server: server.clone(),
        token_file: dir.path().join("missing"),
    };
    assert_eq!(nobody.run(&["mappings", "list"]).await.0, 2, "no token");
    let down = Ctl {
        server: "http://127.0.0.1:9".into(),
        token_file: dir.path().join("token"),
    };
    assert_eq!(down.run(&["mappings", "list"]).await.0, 7, "unreachable");
    let (code, out, _) = ctl.run(&["completions", "bash"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("meshpassctl"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revokes_lists_lifts_and_introspects_end_to_end() {
    std::env::remove_var("VAULT_ADDR");
    std::env::remove_var("VAULT_TOKEN");
    let bao = OpenBao::start();
    bao.enable_transit();
    bao.create_transit_key("meshpass-participant", "ecdsa-p256");
    let dir = tempfile::tempdir().unwrap();
    let issuer = Issuer(p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng));
    let cfg = config(dir.path(), &issuer, &bao);
    let (server, token_url) = serve_both(&cfg).await;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, issuer.token(ADMIN)).unwrap();
    let ctl = Ctl { server, token_file };
    const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";

    // A participant token minted for web (from its own sidecar), active.
    // The workload's sidecar (the trusted proxy, 127.0.0.2) names it in XFCC; meshpassctl
    // itself is a local operator on 127.0.0.1.
    let http = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let exchange = || async {
        let form = format!(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token={}&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt&resource=orders",
            issuer.token_for(WEB, "meshpass")
        );
        let r = http
            .post(format!("{token_url}/token"))
            .header("x-forwarded-client-cert", format!("URI={WEB}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json::<Value>().await.unwrap())
    };
    let (st, minted) = exchange().await;
    assert_eq!(st, 200, "{minted}");
    let participant = dir.path().join("participant");
    std::fs::write(&participant, minted["access_token"].as_str().unwrap()).unwrap();
    let p = participant.to_str().unwrap();
    let (code, out, err) = ctl.run(&["introspect", "-f", p, "-o", "json"]).await;
    assert_eq!(code, 0, "{err}");
    let info: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (info["active"].clone(), info["sub"].clone()),
        (json!(true), json!(WEB))
    );

    // add (table and JSON), list, get.
    let (code, out, err) = ctl
        .run(&[
            "revocations",
            "add",
            "--subject",
            WEB,
            "--reason",
            "compromised node",
            "--until",
            "+1h",
        ])
        .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("revocation rv-") && out.trim_end().ends_with(" created"),
        "{out}"
    );
    let id = out.split_whitespace().nth(1).unwrap().to_string();
    let (code, out, _) = ctl.run(&["revocations", "list"]).await;
    assert_eq!(code, 0);
    assert!(
        out.starts_with("ID") && out.contains(&id) && out.contains("compromised node"),
        "{out}"
    );
    let (code, out, _) = ctl.run(&["revocations", "get", &id, "-o", "json"]).await;
    assert_eq!(code, 0);
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (r["target"].as_str(), r["match"].as_str()),
        (Some("subject"), Some(WEB))
    );
    assert!(r["until"].as_u64().is_some());
    let (code, out, _) = ctl
        .run(&["revocations", "list", "--target", "jti", "-o", "json"])
        .await;
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["items"],
        json!([])
    );

    // Enforced at once: the exchange is refused, the token inactive.
    let (st, body) = exchange().await;
    assert_eq!(st, 403, "{body}");
    assert_eq!(body["error_description"], "revoked: compromised node");
    let (_, out, _) = ctl.run(&["introspect", "-f", p]).await;
    assert!(out.lines().nth(1).unwrap().starts_with("false"), "{out}");

    // lift, and the documented exit codes.
    let (code, out, err) = ctl.run(&["revocations", "lift", &id]).await;
    assert_eq!(
        (code, out.trim()),
        (0, format!("revocation {id} lifted").as_str()),
        "{err}"
    );
    assert_eq!(exchange().await.0, 200);
    assert_eq!(
        ctl.run(&["revocations", "lift", &id]).await.0,
        3,
        "not found"
    );
    let (code, _, err) = ctl
        .run(&[
            "revocations",
            "add",
            "--subject",
            "not-spiffe",
            "--reason",
            "r",
        ])
        .await;
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("match"), "{err}");
    let (code, _, _) = ctl
        .run(&[
            "revocations",
            "add",
            "--subject",
            WEB,
            "--jti",
            "j",
            "--reason",
            "r",
        ])
        .await;
    assert_eq!(code, 2, "one target only");
    let (code, _, _) = ctl
        .run(&[
            "revocations",
            "add",
            "--jti",
            "j",
            "--reason",
            "r",
            "--until",
            "soon",
        ])
        .await;
    assert_eq!(code, 2, "bad --until");
}
