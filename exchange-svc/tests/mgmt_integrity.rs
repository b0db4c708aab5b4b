//! What the management API must refuse so that the store stays consistent and every
//! export imports again: scope rows no mapping grants, claim values too deep to read
//! back, names a URL cannot address, claims an import's rows set differently, an import
//! that leaves a section out or empty (commented out) yet prunes; `If-Match` and
//! `If-None-Match` read as RFC 9110 says; an export in the lists' byte order whatever the
//! collation. Each test runs on SQLite and real PostgreSQL over real sockets.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[macro_use]
mod mgmt_common;

use meshpass_exchange::store::{Actor, Precondition, ScopeClaims, StoreError};
use mgmt_common::*;
use reqwest::Method;
use serde_json::{json, Value};

const LEDGER_SUBJECT: &str = "spiffe://cluster.local/ns/ledger/*";

/// A service with mapping `m1` granting `read` and `write` on `ledger`, and the scope row
/// `ledger/write` that only `m1` grants.
async fn ledger_with_a_write_row(db: Db) -> Service {
    let s = Service::start(db).await;
    let m1 = mapping("m1", LEDGER_SUBJECT, "ledger");
    assert_eq!(s.post("/api/v1/mappings", &m1).await.0, 201);
    let row = json!({"resource": "ledger", "scope": "write", "claims": {"role": "writer"}});
    let (st, _, body) = s.post("/api/v1/scopes", &row).await;
    assert_eq!(st, 201, "{body}");
    s
}

async fn patch(s: &Service, path: &str, body: &Value) -> (u16, Option<String>, Value) {
    s.send(s.req(Method::PATCH, path, Some(ADMIN)).json(body))
        .await
}

/// The current export imports (as a dry run) without a complaint.
async fn export_imports_cleanly(s: &Service) {
    let (st, _, doc) = s.get("/api/v1/export").await;
    assert_eq!(st, 200);
    let (st, _, diff) = s.post("/api/v1/import?dry_run=true", &doc).await;
    assert_eq!(st, 200, "the export does not import: {diff}");
    assert_eq!(diff["changed"], json!([]), "{diff}");
}

fn assert_conflict_naming_the_row(answer: &(u16, Option<String>, Value)) {
    let (st, _, body) = answer;
    assert_eq!(*st, 409, "{body}");
    assert_eq!(body["error"], "conflict", "{body}");
    let msg = body["message"].as_str().unwrap();
    assert!(msg.contains("ledger/write"), "the row is named: {msg}");
}

async fn a_mapping_change_that_would_leave_a_scope_row_granted_by_no_mapping_is_refused_with_409(
    db: Db,
) {
    let s = ledger_with_a_write_row(db).await;
    let (_, _, before) = s.get("/api/v1/mappings/m1").await;
    let r = patch(&s, "/api/v1/mappings/m1", &json!({"scopes": ["read"]})).await;
    assert_conflict_naming_the_row(&r);
    // Moving the mapping to another resource orphans the row just the same.
    let mut moved = before.clone();
    moved["resource"] = json!("journal");
    assert_conflict_naming_the_row(&s.put("/api/v1/mappings/m1", &moved, None).await);
    assert_eq!(
        s.get("/api/v1/mappings/m1").await.2,
        before,
        "nothing changed"
    );
    export_imports_cleanly(&s).await;
    // A change that keeps the scope granted goes through.
    let (st, _, body) = patch(&s, "/api/v1/mappings/m1", &json!({"ttl_secs": 120})).await;
    assert_eq!(st, 200, "{body}");
    // Once the row is gone the scope can go too.
    assert_eq!(s.delete("/api/v1/scopes/ledger/write", None).await.0, 204);
    let (st, _, body) = patch(&s, "/api/v1/mappings/m1", &json!({"scopes": ["read"]})).await;
    assert_eq!(st, 200, "{body}");
    export_imports_cleanly(&s).await;
}

async fn deleting_the_only_mapping_that_grants_a_scope_row_is_refused_with_409(db: Db) {
    let s = ledger_with_a_write_row(db).await;
    assert_conflict_naming_the_row(&s.delete("/api/v1/mappings/m1", None).await);
    assert_eq!(s.get("/api/v1/mappings/m1").await.0, 200, "not deleted");
    export_imports_cleanly(&s).await;
    // With another mapping granting the scope, the first one may go.
    let m2 = mapping("m2", "spiffe://cluster.local/ns/books/*", "ledger");
    assert_eq!(s.post("/api/v1/mappings", &m2).await.0, 201);
    assert_eq!(s.delete("/api/v1/mappings/m1", None).await.0, 204);
    assert_conflict_naming_the_row(&s.delete("/api/v1/mappings/m2", None).await);
    export_imports_cleanly(&s).await;
}

async fn an_import_that_would_leave_a_stored_scope_row_granted_by_no_mapping_is_refused_unless_it_prunes_the_row(
    db: Db,
) {
    let s = ledger_with_a_write_row(db).await;
    let (_, _, before) = s.get("/api/v1/export").await;
    let mut doc = before.clone();
    let m1 = doc["mappings"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|m| m["name"] == "m1")
        .unwrap();
    m1["scopes"] = json!(["read"]);
    doc["scopes"]
        .as_array_mut()
        .unwrap()
        .retain(|r| r["resource"] != "ledger");
    for dry in ["true", "false"] {
        let r = s.post(&format!("/api/v1/import?dry_run={dry}"), &doc).await;
        assert_conflict_naming_the_row(&r);
    }
    assert_eq!(s.get("/api/v1/export").await.2, before, "nothing changed");
    // Pruning deletes the row with the grant: nothing is left ungranted.
    let (st, _, diff) = s.post("/api/v1/import?prune=true", &doc).await;
    assert_eq!(st, 200, "{diff}");
    assert_eq!(s.get("/api/v1/scopes/ledger/write").await.0, 404);
    export_imports_cleanly(&s).await;
}

async fn an_import_may_move_a_grant_to_another_mapping_or_drop_a_mapping_another_still_covers(
    db: Db,
) {
    let s = ledger_with_a_write_row(db).await;
    let (_, _, mut doc) = s.get("/api/v1/export").await;
    let mappings = doc["mappings"].as_array_mut().unwrap();
    mappings.retain(|m| m["name"] != "m1");
    let mut m2 = mapping("m2", "spiffe://cluster.local/ns/books/*", "ledger");
    m2["scopes"] = json!(["write"]);
    mappings.push(m2);
    let (st, _, diff) = s.post("/api/v1/import?prune=true", &doc).await;
    assert_eq!(st, 200, "{diff}");
    assert_eq!(diff["removed"], json!(["mappings/m1"]), "{diff}");
    assert_eq!(s.get("/api/v1/scopes/ledger/write").await.0, 200);
    export_imports_cleanly(&s).await;
}

async fn the_store_itself_refuses_a_write_that_leaves_a_scope_row_ungranted(db: Db) {
    // The API checks before writing; the store checks again inside the transaction,
    // where no concurrent write can slip in between.
    let s = ledger_with_a_write_row(db).await;
    let actor = Actor {
        who: ADMIN.into(),
        request_id: "test".into(),
    };
    let before = s.store.export().await.unwrap();
    let mut doc = before.clone();
    for m in doc.mappings.iter_mut().filter(|m| m.name == "m1") {
        m.scopes = vec!["read".into()];
    }
    doc.scopes.retain(|r| r.resource != "ledger");
    for dry_run in [true, false] {
        let r = s.store.import(&doc, false, dry_run, &actor).await;
        assert!(
            matches!(&r, Err(StoreError::Conflict(m)) if m.contains("ledger/write")),
            "{r:?}"
        );
    }
    let mut m1 = s.store.mapping_tagged("m1").await.unwrap().unwrap().0;
    m1.scopes = vec!["read".into()];
    let r = s.store.save_mapping(&m1, Precondition::None, &actor).await;
    assert!(matches!(&r, Err(StoreError::Conflict(_))), "{r:?}");
    let r = s
        .store
        .remove_mapping("m1", Precondition::None, &actor)
        .await;
    assert!(matches!(&r, Err(StoreError::Conflict(_))), "{r:?}");
    let row = ScopeClaims {
        resource: "ledger".into(),
        scope: "admin".into(),
        claims: serde_json::from_value(json!({"x": 1})).unwrap(),
    };
    let r = s.store.save_scope(&row, Precondition::None, &actor).await;
    assert!(
        matches!(&r, Err(StoreError::Invalid { field, .. }) if field == "scope"),
        "{r:?}"
    );
    assert_eq!(s.store.export().await.unwrap(), before, "nothing changed");
}

async fn a_scope_row_written_while_its_grant_is_removed_is_never_left_ungranted(db: Db) {
    let s = Service::start(db).await;
    for i in 0..15 {
        let (name, resource) = (format!("m{i}"), format!("ledger{i}"));
        let subject = format!("spiffe://cluster.local/ns/ledger{i}/*");
        assert_eq!(
            s.post("/api/v1/mappings", &mapping(&name, &subject, &resource))
                .await
                .0,
            201
        );
        let row = json!({"resource": resource, "scope": "write", "claims": {"c": i}});
        let narrow = json!({"scopes": ["read"]});
        let path = format!("/api/v1/mappings/{name}");
        let (created, narrowed) =
            tokio::join!(s.post("/api/v1/scopes", &row), patch(&s, &path, &narrow));
        // Whichever commits second sees the first: the row needs the grant (422), the
        // grant cannot go while a row needs it (409).
        assert!(
            (created.0 == 201) != (narrowed.0 == 200),
            "round {i}: scope write {} {}, mapping change {} {}",
            created.0,
            created.2,
            narrowed.0,
            narrowed.2
        );
        assert!([201, 422].contains(&created.0), "{}", created.2);
        assert!([200, 409].contains(&narrowed.0), "{}", narrowed.2);
    }
    export_imports_cleanly(&s).await;
}

/// `depth` arrays around a number.
fn nested(depth: usize) -> Value {
    (0..depth).fold(json!(1), |v, _| json!([v]))
}

async fn claim_values_nested_deeper_than_32_levels_are_refused_with_422_naming_the_claim(db: Db) {
    let s = Service::start(db).await;
    assert_eq!(
        s.post("/api/v1/mappings", &mapping("m1", LEDGER_SUBJECT, "ledger"))
            .await
            .0,
        201
    );
    let path = "/api/v1/scopes/ledger/write";
    let row = |v: Value| json!({"resource": "ledger", "scope": "write", "claims": {"deep": v}});
    for depth in [33, 125] {
        let (st, _, body) = s.put(path, &row(nested(depth)), None).await;
        assert_eq!(st, 422, "depth {depth}: {body}");
        assert_eq!(body["field"], "claims.deep", "{body}");
    }
    let deep_object = (0..33).fold(json!(1), |v, _| json!({"k": v}));
    let (st, _, body) = s.put(path, &row(deep_object), None).await;
    assert_eq!((st, &body["field"]), (422, &json!("claims.deep")), "{body}");
    // An import is held to the same bound, naming the entry.
    let (_, _, mut doc) = s.get("/api/v1/export").await;
    doc["scopes"].as_array_mut().unwrap().push(row(nested(33)));
    let (st, _, body) = s.post("/api/v1/import?dry_run=true", &doc).await;
    assert_eq!(st, 422, "{body}");
    assert!(
        body["field"].as_str().unwrap().ends_with("claims.deep"),
        "{body}"
    );
    // 32 levels are stored, and the export carrying them imports again.
    let (st, _, body) = s.put(path, &row(nested(32)), None).await;
    assert_eq!(st, 201, "{body}");
    export_imports_cleanly(&s).await;
}

#[test]
fn the_configuration_holds_claims_and_names_to_the_same_rules() {
    // Seeding goes through the same validation as the API and imports.
    let dir = tempfile::tempdir().unwrap();
    let issuer = common::TestIssuer::new(common::ISSUER, "spire-1");
    let base = common::config_toml(&issuer, &dir.path().join("m.db"), "");
    let deep = format!("{}1{}", "[".repeat(33), "]".repeat(33));
    let cases = [
        (
            base.replace(
                "claims = { role = \"writer\", tier = 2 }",
                &format!("claims = {{ deep = {deep} }}"),
            ),
            "scope_claims[0]",
            "claims.deep",
        ),
        (
            base.replace("name = \"web-to-orders\"", "name = \"..\""),
            "mappings[1]",
            "name",
        ),
    ];
    for (toml, entry, field) in cases {
        assert_ne!(toml, base, "the case edits the configuration");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, toml).unwrap();
        let err = meshpass_exchange::config::Config::load(Some(&path))
            .expect_err("refused")
            .to_string();
        assert!(err.contains(entry) && err.contains(field), "{err}");
    }
}

async fn if_match(s: &Service, method: Method, path: &str, tag: &str, body: Option<&Value>) -> u16 {
    let mut r = s.req(method, path, Some(ADMIN)).header("if-match", tag);
    if let Some(b) = body {
        r = r.json(b);
    }
    s.send(r).await.0
}

async fn if_match_tags_that_do_not_match_are_412_and_only_a_malformed_header_is_400(db: Db) {
    let s = Service::start(db).await;
    let m = mapping("inv", "spiffe://cluster.local/ns/shop/*", "inventory");
    let (_, tag, _) = s.post("/api/v1/mappings", &m).await;
    let tag = tag.unwrap();
    let bare = tag.trim_matches('"');
    let path = "/api/v1/mappings/inv";
    // Weak tags never match (If-Match compares strongly), nor do tags this API never
    // gives out: the condition is false, which is 412.
    for t in [
        format!("W/{tag}"),
        "\"abc\"".to_string(),
        "\"not-hex!\"".to_string(),
        "\"\"".to_string(),
        format!("\"x\", W/{tag}"),
    ] {
        assert_eq!(
            if_match(&s, Method::PUT, path, &t, Some(&m)).await,
            412,
            "{t}"
        );
        assert_eq!(
            if_match(&s, Method::DELETE, path, &t, None).await,
            412,
            "{t}"
        );
        let st = s
            .send(
                s.req(Method::PATCH, path, Some(ADMIN))
                    .header("if-match", &t)
                    .json(&json!({"ttl_secs": 99})),
            )
            .await
            .0;
        assert_eq!(st, 412, "{t}");
    }
    assert_eq!(s.get(path).await.2, m, "nothing changed");
    // Syntactically broken headers are 400.
    for t in [
        bare,
        "\"abc",
        "abc\"",
        "*, \"abc\"",
        "\"a\" \"b\"",
        "W/abc",
        "\"a\",,x",
    ] {
        assert_eq!(
            if_match(&s, Method::PUT, path, t, Some(&m)).await,
            400,
            "{t}"
        );
        assert_eq!(
            if_match(&s, Method::DELETE, path, t, None).await,
            400,
            "{t}"
        );
    }
    // A list matches when one of its tags does; so does `*` an entity that exists.
    let listed = format!("\"abc\", W/{tag} ,{tag}");
    assert_eq!(
        if_match(&s, Method::PUT, path, &listed, Some(&m)).await,
        200
    );
    assert_eq!(if_match(&s, Method::PUT, path, "*", Some(&m)).await, 200);
    // Several header lines are one list.
    let r = s
        .req(Method::PUT, path, Some(ADMIN))
        .header("if-match", "\"abc\"")
        .header("if-match", &tag)
        .json(&m);
    assert_eq!(s.send(r).await.0, 200);
    // PUT of a missing entity under If-Match: the condition is false (RFC 9110 §13.1.1).
    let missing = "/api/v1/mappings/missing";
    let new = mapping("missing", "spiffe://cluster.local/ns/other/*", "inventory");
    for t in ["*", tag.as_str(), "W/\"abc\""] {
        assert_eq!(
            if_match(&s, Method::PUT, missing, t, Some(&new)).await,
            412,
            "{t}"
        );
    }
    assert_eq!(s.get(missing).await.0, 404, "not created");
    // DELETE of a missing entity is 404 whatever the tag: without the condition the
    // answer would not be a success either (RFC 9110 §13.2.1).
    for t in ["*", tag.as_str(), "W/\"abc\"", "\"abc\""] {
        assert_eq!(
            if_match(&s, Method::DELETE, missing, t, None).await,
            404,
            "{t}"
        );
    }
    // Without If-Match nothing changes: PUT creates, DELETE of a missing one is 404.
    assert_eq!(s.put(missing, &new, None).await.0, 201);
    assert_eq!(s.delete("/api/v1/mappings/gone", None).await.0, 404);
    // The current tag still works, quoted and strong.
    let (_, tag, _) = s.get(path).await;
    assert_eq!(
        if_match(&s, Method::DELETE, path, &tag.unwrap(), None).await,
        204
    );
}

fn assert_invalid(answer: (u16, Option<String>, Value), field: &str, what: &str) {
    let (st, _, body) = answer;
    assert_eq!(st, 422, "{what}: {body}");
    assert_eq!(body["error"], "invalid", "{what}: {body}");
    assert_eq!(body["field"], field, "{what}: {body}");
}

async fn names_made_only_of_dots_are_refused_with_422_naming_the_field(db: Db) {
    let s = Service::start(db).await;
    for dots in [".", "..", "..."] {
        let m = mapping(dots, LEDGER_SUBJECT, "ledger");
        assert_invalid(s.post("/api/v1/mappings", &m).await, "name", dots);
        let m = mapping("m1", LEDGER_SUBJECT, dots);
        assert_invalid(s.post("/api/v1/mappings", &m).await, "resource", dots);
        let mut m = mapping("m1", LEDGER_SUBJECT, "ledger");
        m["scopes"] = json!(["read", dots]);
        assert_invalid(s.post("/api/v1/mappings", &m).await, "scopes", dots);
        let row = json!({"resource": dots, "scope": "read", "claims": {"x": 1}});
        assert_invalid(s.post("/api/v1/scopes", &row).await, "resource", dots);
        let row = json!({"resource": "payments", "scope": dots, "claims": {"x": 1}});
        assert_invalid(s.post("/api/v1/scopes", &row).await, "scope", dots);
        // An import names the entry.
        let doc = json!({"mappings": [mapping(dots, LEDGER_SUBJECT, "ledger")]});
        let r = s.post("/api/v1/import?dry_run=true", &doc).await;
        assert_invalid(r, "mappings[0].name", dots);
    }
    // Dots inside a name are fine.
    let m = mapping("a..b.", LEDGER_SUBJECT, "ledger.v2");
    let (st, _, body) = s.post("/api/v1/mappings", &m).await;
    assert_eq!(st, 201, "{body}");
    assert_eq!(s.get("/api/v1/mappings/a..b.").await.2, m);
    let (_, _, list) = s.get("/api/v1/mappings").await;
    assert!(
        list["items"].as_array().unwrap().iter().all(|m| !m["name"]
            .as_str()
            .unwrap()
            .chars()
            .all(|c| c == '.')),
        "{list}"
    );
}

// Imports that must not prune more than the document says, and answers as documented.

async fn import(s: &Service, query: &str, ct: &str, body: String) -> (u16, Option<String>, Value) {
    let r = s
        .req(Method::POST, &format!("/api/v1/import{query}"), Some(ADMIN))
        .header("content-type", ct)
        .body(body);
    s.send(r).await
}

/// `/openapi.json` documents `If-None-Match: *` as "create only (412 when it exists)",
/// and RFC 9110 §13.1.2 says a false If-None-Match on a PUT is 412.
async fn a_put_with_if_none_match_star_on_an_existing_entity_is_412_as_the_openapi_document_says(
    db: Db,
) {
    let s = Service::start(db).await;
    let (_, _, doc) = s.send(s.req(Method::GET, "/openapi.json", None)).await;
    let params = doc["paths"]["/api/v1/mappings/{name}"]["put"]["parameters"]
        .as_array()
        .unwrap();
    let inm = params
        .iter()
        .find(|p| p["name"] == "If-None-Match")
        .unwrap();
    assert!(
        inm["description"].as_str().unwrap().contains("412"),
        "{inm}"
    );
    let m = mapping("inv", "spiffe://cluster.local/ns/shop/*", "inventory");
    assert_eq!(s.post("/api/v1/mappings", &m).await.0, 201);
    let mut m2 = m.clone();
    m2["ttl_secs"] = json!(60);
    let r = s
        .req(Method::PUT, "/api/v1/mappings/inv", Some(ADMIN))
        .header("if-none-match", "*")
        .json(&m2);
    let (st, _, body) = s.send(r).await;
    assert_eq!(
        (st, body["error"].as_str()),
        (412, Some("precondition_failed")),
        "PUT mapping If-None-Match: * on an existing one: {body}"
    );
    // The same for a scope row (seeded payments/read).
    let row = json!({"resource": "payments", "scope": "read", "claims": {"role_read": false}});
    let r = s
        .req(Method::PUT, "/api/v1/scopes/payments/read", Some(ADMIN))
        .header("if-none-match", "*")
        .json(&row);
    let (st, _, body) = s.send(r).await;
    assert_eq!(
        (st, body["error"].as_str()),
        (412, Some("precondition_failed")),
        "PUT scope If-None-Match: * on an existing one: {body}"
    );
    assert_eq!(s.get("/api/v1/mappings/inv").await.2["ttl_secs"], 300);
}

/// README: 422 names "the field and why ... unknown field, a value of the wrong type;
/// `field` is the JSON path: ... `mappings[1].ttl_secs`" — `/import` takes YAML too.
async fn a_yaml_import_names_the_refused_field_by_its_json_path_as_a_json_one_does(db: Db) {
    let s = Service::start(db).await;
    let (_, _, mut doc) = s.get("/api/v1/export").await;
    doc["mappings"][1]["ttl_secs"] = json!("soon");
    let (st, _, json_err) = import(&s, "?dry_run=true", "application/json", doc.to_string()).await;
    assert_eq!(
        (st, json_err["field"].as_str()),
        (422, Some("mappings[1].ttl_secs")),
        "{json_err}"
    );
    let yaml = serde_yaml::to_string(&doc).unwrap();
    let (st, _, yaml_err) = import(&s, "?dry_run=true", "application/yaml", yaml).await;
    assert_eq!(st, 422, "{yaml_err}");
    assert_eq!(
        yaml_err["field"], "mappings[1].ttl_secs",
        "the same document in YAML: {yaml_err}"
    );
}

/// README: a claim another scope of the resource sets differently is `422` with the
/// field (a single-row write answers `invalid` on `claims`); `409` is for an existing
/// entity, a concurrent transaction, or a row left ungranted. An import document whose
/// own rows disagree is none of those.
async fn an_import_whose_scope_rows_set_one_claim_differently_is_422_naming_the_row(db: Db) {
    let s = Service::start(db).await;
    let (_, _, mut doc) = s.get("/api/v1/export").await;
    // Seeded: payments/write sets role = "writer"; make payments/read set it otherwise.
    let scopes = doc["scopes"].as_array_mut().unwrap();
    let i = scopes.iter().position(|r| r["scope"] == "read").unwrap();
    scopes[i]["claims"]["role"] = json!("admin");
    let (st, _, err) = import(&s, "?dry_run=true", "application/json", doc.to_string()).await;
    assert_eq!(
        (st, err["error"].as_str()),
        (422, Some("invalid")),
        "conflicting claims in a document: {err}"
    );
    assert!(
        err["field"]
            .as_str()
            .unwrap_or_default()
            .starts_with("scopes["),
        "{err}"
    );
}

/// README: "a body that names neither `mappings` nor `scopes` ... is 422 on body, so a
/// lost file never prunes everything (`mappings: []` says none)". A YAML file whose
/// entries are all commented out names both sections with no value (null): it says no
/// more than an empty file and must not read as `mappings: []`.
async fn a_yaml_document_whose_sections_are_all_commented_out_prunes_nothing(db: Db) {
    let s = Service::start(db).await;
    let (_, _, before) = s.get("/api/v1/export").await;
    let body = "mappings:\n#  - name: web-to-orders\nscopes:\n#  - resource: payments\n";
    let (st, _, answer) = import(&s, "?prune=true", "application/yaml", body.into()).await;
    let (_, _, after) = s.get("/api/v1/export").await;
    assert_eq!(after, before, "import answered {st} {answer}");
}

/// README: "`mappings: []` says none". A document that names only `scopes` does not say
/// there are no mappings; with prune it must not delete every mapping.
async fn a_document_naming_only_scopes_never_prunes_every_mapping(db: Db) {
    let s = Service::start(db).await;
    let (st, _, answer) = import(
        &s,
        "?prune=true&dry_run=true",
        "application/json",
        json!({"scopes": []}).to_string(),
    )
    .await;
    let removed = answer["removed"].as_array().cloned().unwrap_or_default();
    assert!(
        !removed
            .iter()
            .any(|r| r.as_str().unwrap_or_default().starts_with("mappings/")),
        "a scopes-only document would delete mappings: {st} {answer}"
    );
}

/// README: list pages come "in byte order of the name (whatever the database's
/// collation)", and the export is the document kept in Git, "sorted (by name; by
/// resource and scope)": on PostgreSQL with a linguistic collation (ICU, `en_US`) the
/// same store must export in the same order as SQLite does and as the list pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_is_in_the_same_byte_order_as_the_lists_whatever_the_postgres_collation() {
    let db = Db::postgres();
    let Db::Postgres(pg) = &db else {
        unreachable!()
    };
    // As a database created with an ICU / en_US default collation sorts these columns:
    // the schema migrated, then the column changed, before the service connects (a
    // pooled connection's prepared statements would not survive the change).
    let migrated = meshpass_exchange::store::SqlStore::connect(
        &meshpass_exchange::store::StoreConfig {
            url: pg.url(),
            ..Default::default()
        },
        "participant",
    )
    .unwrap();
    migrated.migrate().await.unwrap();
    migrated.close().await;
    pg.psql("ALTER TABLE mappings ALTER COLUMN name TYPE TEXT COLLATE \"en-x-icu\"");
    let s = Service::start(db).await;
    let Db::Postgres(pg) = &s.db else {
        unreachable!()
    };
    // (Written straight to the table; the API only reads here.)
    for (name, ns) in [("alpha", "a"), ("Beta", "b"), ("gamma", "g"), ("Zulu", "z")] {
        pg.psql(&format!(
            "INSERT INTO mappings (name, subject, resource, participant, audiences, scopes, ttl_secs, \
             rate_per_second, rate_burst, revision, updated_at, allowed_callers, allowed_actors) VALUES \
             ('{name}', 'spiffe://cluster.local/ns/{ns}/*', 'inventory', 'acme', '[]', '[]', 300, 0, 0, 1, 0, '[]', '[]')"
        ));
    }
    let names = |v: &Value, key: &str| -> Vec<String> {
        v[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap().to_string())
            .collect()
    };
    let listed = names(&s.get("/api/v1/mappings?limit=1000").await.2, "items");
    let exported = names(&s.get("/api/v1/export").await.2, "mappings");
    let mut bytes = listed.clone();
    bytes.sort();
    assert_eq!(listed, bytes, "the list is in byte order");
    assert_eq!(exported, listed, "the export is in the list's (byte) order");
}

on_both_backends!(
    a_put_with_if_none_match_star_on_an_existing_entity_is_412_as_the_openapi_document_says,
    a_yaml_import_names_the_refused_field_by_its_json_path_as_a_json_one_does,
    an_import_whose_scope_rows_set_one_claim_differently_is_422_naming_the_row,
    a_yaml_document_whose_sections_are_all_commented_out_prunes_nothing,
    a_document_naming_only_scopes_never_prunes_every_mapping,
    a_mapping_change_that_would_leave_a_scope_row_granted_by_no_mapping_is_refused_with_409,
    deleting_the_only_mapping_that_grants_a_scope_row_is_refused_with_409,
    an_import_that_would_leave_a_stored_scope_row_granted_by_no_mapping_is_refused_unless_it_prunes_the_row,
    an_import_may_move_a_grant_to_another_mapping_or_drop_a_mapping_another_still_covers,
    the_store_itself_refuses_a_write_that_leaves_a_scope_row_ungranted,
    a_scope_row_written_while_its_grant_is_removed_is_never_left_ungranted,
    claim_values_nested_deeper_than_32_levels_are_refused_with_422_naming_the_claim,
    if_match_tags_that_do_not_match_are_412_and_only_a_malformed_header_is_400,
    names_made_only_of_dots_are_refused_with_422_naming_the_field,
);
