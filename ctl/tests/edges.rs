//! `meshpassctl` at its edges: what it sends where (no proxy, no redirect), answers
//! that are not what it asked for, requests it cannot build, documents it reads and
//! sends, and slips an operator makes (a unit typed wrong, the token port for the
//! management port, one mapping twice in a file, a stream without end), each against a
//! running service or a minimal stand-in HTTP peer.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------

/// A token file whose content is no header value (two lines, e.g. a token and a
/// comment, or a pasted token with a line break) is a usage problem (exit 2), but
/// `meshpassctl` reports the server as unreachable (exit 7, "builder error").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_is_no_header_value_is_usage_not_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let (server, seen) = fake_http(|_, _| http("200 OK", "", r#"{"items": []}"#));
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "eyJhbGciOi.part-one\neyJzdWIi.part-two\n").unwrap();
    let ctl = Ctl { server, token_file };
    let (code, _, err) = ctl.run_env(&["mappings", "list"], &[]).await;
    assert!(seen.lock().unwrap().is_empty(), "nothing was sent");
    assert_eq!(
        code, 2,
        "a bad token file is a usage error, not an outage: {err}"
    );
}

/// The server down: the message says where, but not what is wrong (connection refused,
/// TLS, DNS): reqwest's Display hides its source error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "x.y.z").unwrap();
    let down = Ctl {
        server: "http://127.0.0.1:9".into(),
        token_file: token_file.clone(),
    };
    let (code, _, err) = down.run_env(&["mappings", "list"], &[]).await;
    assert_eq!(code, 7, "{err}");
    eprintln!("connection refused → {err}");
    // https against a plain-HTTP listener (a TLS problem, not an outage).
    let (plain, _) = fake_http(|_, _| http("200 OK", "", "{}"));
    let tls = Ctl {
        server: plain.replace("http://", "https://"),
        token_file,
    };
    let (code2, _, err2) = tls.run_env(&["mappings", "list"], &[]).await;
    eprintln!("TLS to a plain port → exit {code2}: {err2}");
    assert!(
        err.to_lowercase().contains("refused"),
        "the message should say the connection was refused: {err}"
    );
    assert!(
        err2.to_lowercase().contains("tls")
            || err2.to_lowercase().contains("certificate")
            || err2.to_lowercase().contains("handshake")
            || err2.to_lowercase().contains("record"),
        "the message should say TLS failed: {err2}"
    );
}

/// With `HTTP_PROXY` in the environment (common on operator machines), the bearer JWT
/// of the management API goes to the proxy, even for the loopback default server
/// (reqwest's system proxy has no loopback exception). README: "It is sent only in
/// the Authorization header and never printed" – and the API is bound to loopback so a
/// local operator's token never leaves the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_never_goes_to_an_environment_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let (proxy, seen) = fake_http(|_, _| http("502 Bad Gateway", "", ""));
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "header.secret-management-token.sig").unwrap();
    let ctl = Ctl {
        server: "http://127.0.0.1:8081".into(),
        token_file,
    };
    let (code, _, err) = ctl
        .run_env(&["mappings", "list"], &[("HTTP_PROXY", &proxy)])
        .await;
    let seen = seen.lock().unwrap().join("\n---\n");
    eprintln!("exit {code}: {err}");
    assert!(
        !seen.contains("secret-management-token"),
        "the proxy received the bearer token:\n{seen}"
    );
}

/// A write answered with a redirect is followed as a GET (302 after POST, 303 after
/// any method), and the GET's 200 is reported as the write's success: the revocation
/// was never created, the mapping never deleted, exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirected_write_is_not_reported_as_done() {
    let dir = tempfile::tempdir().unwrap();
    let (server, seen) = fake_http(|m, p| match (m, p) {
        ("POST", "/api/v1/revocations") => {
            http("302 Found", "location: /api/v1/revocations\r\n", "")
        }
        ("DELETE", _) => http("303 See Other", &format!("location: {p}\r\n"), ""),
        ("GET", _) => http(
            "200 OK",
            "content-type: application/json\r\n",
            r#"{"items": [], "version": 0, "name": "inv"}"#,
        ),
        _ => http("405 Method Not Allowed", "", ""),
    });
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "a.b.c").unwrap();
    let ctl = Ctl { server, token_file };
    let (code, out, err) = ctl
        .run_env(
            &[
                "revocations",
                "add",
                "--subject",
                "spiffe://cluster.local/ns/shop/sa/web",
                "--reason",
                "compromised",
            ],
            &[],
        )
        .await;
    let (code2, out2, err2) = ctl.run_env(&["mappings", "delete", "inv"], &[]).await;
    let methods: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.lines().next().unwrap_or("").to_string())
        .collect();
    eprintln!("requests: {methods:?}");
    assert!(
        code != 0 && code2 != 0,
        "POST answered 302 (nothing created): exit {code} {out:?} {err:?}; \
         DELETE answered 303 (nothing deleted): exit {code2} {out2:?} {err2:?}"
    );
}

/// `--server` pointing at something that answers 200 with no page (a web UI, a default
/// backend, the wrong port behind a proxy): `mappings list` prints an empty table and
/// exits 0, telling the operator there are no mappings. README: exit 1 for "an
/// unexpected answer".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_is_no_page_is_not_an_empty_list() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = fake_http(|_, _| {
        http(
            "200 OK",
            "content-type: text/html\r\n",
            "<html><body>Welcome</body></html>",
        )
    });
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "a.b.c").unwrap();
    let ctl = Ctl { server, token_file };
    let mut zero = Vec::new();
    for args in [
        &["mappings", "list"][..],
        &["scopes", "list"][..],
        &["revocations", "list"][..],
        &["audit", "tail"][..],
    ] {
        let (code, out, _) = ctl.run_env(args, &[]).await;
        if code == 0 {
            zero.push(format!("{args:?} → exit 0, {out:?}"));
        }
    }
    assert!(
        zero.is_empty(),
        "an HTML 200 read as an empty list:\n{}",
        zero.join("\n")
    );
}

/// `mappings apply -f` of a document whose `mappings` is not a list (one object
/// written under the key, or `null`): nothing is sent, nothing printed, exit 0 – even
/// with the server down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mappings_key_that_is_no_list_is_not_success() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "a.b.c").unwrap();
    let ctl = Ctl {
        server: "http://127.0.0.1:9".into(),
        token_file,
    };
    let f = dir.path().join("m.yaml");
    std::fs::write(
        &f,
        "mappings:\n  name: inv\n  subject: spiffe://cluster.local/ns/shop/*\n  resource: inventory\n  participant: acme\n  ttl_secs: 300\n",
    )
    .unwrap();
    let (code, out, err) = ctl
        .run_env(&["mappings", "apply", "-f", f.to_str().unwrap()], &[])
        .await;
    assert_ne!(code, 0, "nothing applied, yet exit 0: {out:?} {err:?}");
}

/// Against the real service: a JSON policy document (README: "YAML or JSON"; `export
/// -o json` writes one) is sent as `application/yaml`, so the service parses it as YAML:
/// valid JSON that YAML reads differently is refused. A `\uD83D\uDE00` escape (what
/// Python's json.dump writes for any non-BMP character) is valid JSON, no YAML.
/// Also: a 9 MiB import is documented as exit 1 (`too_large`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_and_apply_of_json_documents_against_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let (_bao, _issuer, ctl, _) = start_service(dir.path()).await;
    let doc = r#"{"mappings": [{"name": "web-to-orders", "subject": "spiffe://cluster.local/ns/shop/sa/web", "resource": "orders", "participant": "acme", "scopes": ["read"], "ttl_secs": 600}],
 "scopes": [{"resource": "orders", "scope": "read", "claims": {"tier": "gold \ud83d\ude00"}}]}"#;
    // The API itself takes it as JSON.
    let token = std::fs::read_to_string(&ctl.token_file).unwrap();
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/import?dry_run=true", ctl.server))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(doc)
        .send()
        .await
        .unwrap();
    let st = r.status().as_u16();
    let body = r.text().await.unwrap();
    assert_eq!(st, 200, "the API accepts the JSON document: {body}");
    let f = dir.path().join("policy.json");
    std::fs::write(&f, doc).unwrap();
    let (code, out, err) = ctl
        .run_env(&["import", "--dry-run", "-f", f.to_str().unwrap()], &[])
        .await;
    let row = dir.path().join("row.json");
    std::fs::write(
        &row,
        r#"{"resource": "orders", "scope": "read", "claims": {"tier": "gold \ud83d\ude00"}}"#,
    )
    .unwrap();
    let (code2, out2, err2) = ctl
        .run_env(&["scopes", "apply", "-f", row.to_str().unwrap()], &[])
        .await;
    assert_eq!(code, 0, "import of a JSON document: {out} {err}");
    assert_eq!(code2, 0, "scopes apply of a JSON row: {out2} {err2}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_too_large_import_exits_1_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let (_bao, _issuer, ctl, _) = start_service(dir.path()).await;
    let f = dir.path().join("big.yaml");
    let mut s = String::from("mappings: []\n");
    // Just over 8 MiB (README: 413 → exit 1). The service answers 413 from the
    // Content-Length and closes; whether the client sees it races the upload.
    while s.len() < 9 * 1024 * 1024 {
        s.push_str("# padding padding padding padding padding padding padding padding\n");
    }
    std::fs::write(&f, s).unwrap();
    let mut got = Vec::new();
    for _ in 0..10 {
        let (code, _, err) = ctl
            .run_env(&["import", "--dry-run", "-f", f.to_str().unwrap()], &[])
            .await;
        got.push((code, err.trim().to_string()));
    }
    assert!(
        got.iter().all(|(c, e)| *c == 1 && e.contains("too_large")),
        "413 too_large should exit 1: {got:#?}"
    );
}

/// Sanity: a URI resource is one path segment both ways (apply, get, delete).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uri_resources_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (_bao, _issuer, ctl, _) = start_service(dir.path()).await;
    let m = dir.path().join("m.yaml");
    std::fs::write(&m, "name: pay\nsubject: spiffe://cluster.local/ns/shop/*\nresource: https://payments.internal/v1\nparticipant: acme\nscopes: [read]\nttl_secs: 300\n").unwrap();
    let (code, out, err) = ctl
        .run_env(&["mappings", "apply", "-f", m.to_str().unwrap()], &[])
        .await;
    assert_eq!(code, 0, "{out} {err}");
    let r = dir.path().join("r.yaml");
    std::fs::write(
        &r,
        "resource: https://payments.internal/v1\nscope: read\nclaims: {tier: 1}\n",
    )
    .unwrap();
    let (code, out, err) = ctl
        .run_env(&["scopes", "apply", "-f", r.to_str().unwrap()], &[])
        .await;
    assert_eq!(code, 0, "{out} {err}");
    let (code, out, err) = ctl
        .run_env(
            &[
                "scopes",
                "get",
                "https://payments.internal/v1",
                "read",
                "-o",
                "json",
            ],
            &[],
        )
        .await;
    assert_eq!(code, 0, "{out} {err}");
    let (code, tag, err) = ctl
        .run_env(
            &[
                "scopes",
                "get",
                "https://payments.internal/v1",
                "read",
                "--etag",
            ],
            &[],
        )
        .await;
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = ctl
        .run_env(
            &[
                "scopes",
                "delete",
                "https://payments.internal/v1",
                "read",
                "--if-match",
                tag.trim(),
            ],
            &[],
        )
        .await;
    assert_eq!(code, 0, "{out} {err}");
    let (code, _, err) = ctl
        .run_env(&["audit", "tail", "-n", "5", "-o", "json"], &[])
        .await;
    assert_eq!(code, 0, "{err}");
    let _ = json!({});
    let _: Option<Value> = None;
}

/// Runs meshpassctl against `server` with `args` (a token file in `dir`), reads the
/// first `bytes` bytes of its output and closes the pipe, as `| head -c` would; its
/// output once it ended.
async fn run_with_reader_leaving(
    dir: &std::path::Path,
    server: &str,
    args: &[&str],
    bytes: usize,
) -> std::process::Output {
    let token_file = dir.join("token");
    std::fs::write(&token_file, "a.b.c").unwrap();
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("meshpassctl"))
        .args(["--server", server, "--token-file"])
        .arg(&token_file)
        .args(args)
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = vec![0u8; bytes];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    drop(child.stdout.take());
    tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap()
}

/// `meshpassctl ... | head -1`: once the reader has gone, the command ends quietly
/// (exit 0, nothing on stderr), as Unix tools do, not with a panic (exit 101).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_goes_away_ends_the_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = fake_http(|_, _| {
        // A page far larger than a pipe's buffer.
        let items: Vec<Value> = (0..3000)
            .map(|i| {
                json!({"name": format!("m{i}"), "subject": "spiffe://cluster.local/ns/a/sa/b",
                       "resource": "r", "participant": "p", "scopes": ["read"], "ttl_secs": 60})
            })
            .collect();
        http(
            "200 OK",
            "content-type: application/json\r\n",
            &json!({"items": items}).to_string(),
        )
    });
    let out = run_with_reader_leaving(dir.path(), &server, &["mappings", "list"], 64).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `meshpassctl mappings apply -f all.yaml | grep -q configured`: the reader leaves
/// after the first line, and the next line ended the command with 0 while the rest of
/// the file was never sent: a partial apply that said success. The writes go on; only
/// their report is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_whose_reader_goes_away_still_sends_every_entry() {
    let dir = tempfile::tempdir().unwrap();
    let (server, seen) = fake_http(|method, path| {
        let name = path.rsplit('/').next().unwrap_or("").to_string();
        if method == "PUT" && name != "m0" {
            // Answered after the test has closed the pipe.
            std::thread::sleep(std::time::Duration::from_millis(400));
        }
        http(
            "201 Created",
            "content-type: application/json\r\netag: \"e\"\r\n",
            &json!({"name": name}).to_string(),
        )
    });
    let f = dir.path().join("all.yaml");
    let entries: String = (0..3)
        .map(|i| {
            format!("  - name: m{i}\n    subject: spiffe://cluster.local/ns/a/*\n    resource: r\n    participant: p\n    ttl_secs: 60\n")
        })
        .collect();
    std::fs::write(&f, format!("mappings:\n{entries}")).unwrap();
    let apply = ["mappings", "apply", "-f", f.to_str().unwrap()];
    let out = run_with_reader_leaving(dir.path(), &server, &apply, 8).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let puts = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.starts_with("PUT "))
        .count();
    assert!(
        puts == 3 || out.status.code() != Some(0),
        "exit {:?} after {puts} of 3 entries were sent: {stderr}",
        out.status.code()
    );
}

// --------------------------------------------------------------------------------------- operator slips

const MAPPING: &str =
    "subject: spiffe://cluster.local/ns/a/*\nresource: audited\nparticipant: p\nscopes: [read]\n";

/// `revocations add --until +5µ` (a typo, or a unit from another tool) is a usage error
/// naming `--until` (exit 2), as `--until soon` is: never a Rust panic (exit 101 and a
/// backtrace), which `until()` gives by splitting the text at a byte that is inside a
/// multi-byte character.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_until_ending_in_a_multibyte_character_is_a_usage_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let (_bao, _issuer, ctl, _) = start_service(dir.path()).await;
    for until in ["+5µ", "+1é", "+€"] {
        let (code, out, err) = ctl
            .run(&[
                "revocations",
                "add",
                "--jti",
                "j-1",
                "--reason",
                "r",
                "--until",
                until,
            ])
            .await;
        assert!(
            code == 2 && err.contains("--until") && !err.contains("panicked"),
            "--until {until}: exit {code}, stdout {out:?}, stderr {err}"
        );
    }
    let (code, out, _) = ctl.run(&["revocations", "list", "-o", "json"]).await;
    assert_eq!(code, 0);
    assert!(!out.contains("j-1"), "nothing revoked: {out}");
}

/// `--server` pointing at the service's token port (8080, next to the management API's
/// 8081: the likeliest slip) answers every management path `404` with no body, not the
/// API's `{"error": "not_found", ...}`. meshpassctl reads it as the API's "not found"
/// (exit 3, `404 Not Found: null`): `mappings delete` and `revocations lift` then read as
/// "already gone" to a script, `keys rotate` as "no such thing", while nothing was
/// deleted, lifted or rotated. A 404 that is not the API's answer is an unexpected
/// answer (exit 1, asking whether `--server` is the management API), as a 2xx that is not
/// the API's already is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_that_is_not_the_api_s_answer_is_not_read_as_already_gone() {
    let dir = tempfile::tempdir().unwrap();
    let (_bao, _issuer, ctl, token_url) = start_service(dir.path()).await;
    let wrong = Ctl {
        server: token_url.clone(),
        token_file: ctl.token_file.clone(),
    };
    let mut wrong_reads = Vec::new();
    for args in [
        vec!["mappings", "delete", "web-to-orders"],
        vec![
            "revocations",
            "lift",
            "rv-00000000-0000-0000-0000-000000000000",
        ],
        vec!["keys", "rotate"],
        vec!["mappings", "list"],
    ] {
        let (code, out, err) = wrong.run(&args).await;
        if code != 1 || !err.contains("is --server the management API?") {
            wrong_reads.push(format!(
                "{args:?} against {token_url}: exit {code}, stdout {out:?}, stderr {err}"
            ));
        }
    }
    // The mapping is still there: the "not found" of the delete was never the API's.
    assert_eq!(ctl.run(&["mappings", "get", "web-to-orders"]).await.0, 0);
    assert!(wrong_reads.is_empty(), "{}", wrong_reads.join("\n"));
}

/// `mappings apply -f` of a list naming one mapping twice (two edits of `dup` pasted
/// into one file): meshpassctl writes both, one after the other ("mapping dup created",
/// "mapping dup configured", exit 0), so the first entry is silently lost and the
/// operator cannot tell which one the service holds. `import` of the same list is
/// refused by the API (`mappings/dup is listed twice`, exit 5), and the README says
/// `apply` checks every entry before it sends any: such a file should be refused (exit
/// 2, naming the name) and write nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_of_a_file_naming_one_mapping_twice_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_bao, _issuer, ctl, _) = start_service(dir.path()).await;
    let entry = |ttl: u32| {
        format!(
            "- name: dup\n{}",
            format!("{MAPPING}ttl_secs: {ttl}\n")
                .lines()
                .map(|l| format!("  {l}\n"))
                .collect::<String>()
        )
    };
    let file = dir.path().join("dup.yaml");
    std::fs::write(&file, format!("{}{}", entry(100), entry(200))).unwrap();
    let f = file.to_str().unwrap();
    let (code, out, err) = ctl.run(&["mappings", "apply", "-f", f]).await;
    let (get, held, _) = ctl.run(&["mappings", "get", "dup", "-o", "json"]).await;
    assert!(
        code == 2 && err.contains("dup") && get == 3,
        "apply: exit {code}, stdout {out:?}, stderr {err:?}; then `mappings get dup`: exit {get} {held}"
    );
}

/// `import -f -` reading a stream (a pipe from another tool, or `-f /dev/zero` by
/// mistake) reads all of it into memory before checking the 8 MiB the API reads: a
/// stream that does not end is never refused (and one without end exhausts memory).
/// The README: "too_large (a request body over 8 MiB, e.g. a large import document:
/// refused before sending)". Reading should stop once the input passes the bound
/// (exit 1, `too_large`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_from_a_stream_longer_than_8_mib_is_refused_without_reading_it_to_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let (_bao, _issuer, ctl, _) = start_service(dir.path()).await;
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("meshpassctl"))
        .arg("--server")
        .arg(&ctl.server)
        .arg("--token-file")
        .arg(&ctl.token_file)
        .args(["import", "--dry-run", "-f", "-"])
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // 9 MiB of comments, then the pipe is held open (a producer that has not finished).
    let writer = std::thread::spawn(move || {
        let line = format!("#{}\n", "x".repeat(1023));
        for _ in 0..9 * 1024 {
            if stdin.write_all(line.as_bytes()).is_err() {
                return;
            }
        }
        std::thread::sleep(Duration::from_secs(30));
        drop(stdin);
    });
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if t0.elapsed() > Duration::from_secs(15) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if status.is_none() {
        child.kill().unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    drop(writer);
    assert!(
        status.is_some_and(|s| s.code() == Some(1)) && err.contains("too_large"),
        "still reading 15 s after the input passed 8 MiB (status {status:?}): {err}"
    );
}

/// `--if-match '*'` is the API's "only if it exists" (RFC 9110; exchange-svc README:
/// "`*` (the entity exists)"), and the README says a tag is passed "as the server sent
/// it or bare". meshpassctl quotes `*` into the entity tag `"*"`, which names no version:
/// every such write is refused as stale (exit 4, "changed since it was read"), which it
/// was not. `*` should be sent as `*`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_match_star_replaces_an_existing_mapping_as_the_api_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let (_bao, _issuer, ctl, _) = start_service(dir.path()).await;
    let file = dir.path().join("w.yaml");
    std::fs::write(
        &file,
        "name: web-to-orders\nsubject: spiffe://cluster.local/ns/shop/sa/web\nresource: orders\nparticipant: acme\nscopes: [read]\nttl_secs: 300\n",
    )
    .unwrap();
    let (code, out, err) = ctl
        .run(&[
            "mappings",
            "apply",
            "-f",
            file.to_str().unwrap(),
            "--if-match",
            "*",
        ])
        .await;
    assert_eq!(
        (code, out.trim()),
        (0, "mapping web-to-orders configured"),
        "the mapping exists, so `*` matches: {err}"
    );
}

/// A YAML file whose mapping is named `2024` (YAML reads an unquoted number as one) is
/// refused (right: the API takes a string), but the message says the entry is "a
/// mapping without `name`", which the operator looking at `name: 2024` cannot square.
/// The message should say that `name` is not a string (quote it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_is_not_a_string_is_refused_saying_so_not_as_missing() {
    let dir = tempfile::tempdir().unwrap();
    let (_bao, _issuer, ctl, _) = start_service(dir.path()).await;
    let file = dir.path().join("n.yaml");
    std::fs::write(&file, format!("name: 2024\n{MAPPING}ttl_secs: 100\n")).unwrap();
    let (code, _, err) = ctl
        .run(&["mappings", "apply", "-f", file.to_str().unwrap()])
        .await;
    assert_eq!(code, 2, "{err}");
    assert!(
        !err.contains("without `name`") && err.contains("string"),
        "the entry has a name, a number: {err}"
    );
}

/// "Lists follow the API's cursors to the end": a server behind `--server` that hands
/// back the cursor it was given (a proxy cache keyed without the query, a buggy
/// replica) makes `mappings list` request page after page for ever, collecting the
/// same items without bound, never exiting. A cursor that comes back unchanged is no
/// progress: an unexpected answer (exit 1), after one repeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_whose_cursor_never_advances_ends_instead_of_looping_for_ever() {
    let dir = tempfile::tempdir().unwrap();
    let (server, seen) = fake_http(|_, _| {
        http(
            "200 OK",
            "content-type: application/json\r\n",
            r#"{"items": [{"name": "m"}], "next_cursor": "c1"}"#,
        )
    });
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "a.b.c").unwrap();
    let ctl = Ctl { server, token_file };
    let t0 = Instant::now();
    let mut cmd = assert_cmd::Command::cargo_bin("meshpassctl").unwrap();
    cmd.args(["--server", &ctl.server, "--token-file"])
        .arg(&ctl.token_file)
        .args(["mappings", "list"])
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .timeout(Duration::from_secs(10));
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let requests = seen.lock().unwrap().len();
    assert!(
        out.status.code() == Some(1),
        "exit {:?} after {:?} and {requests} requests for the same page: {}",
        out.status.code(),
        t0.elapsed(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// README: `--cacert`, `--cert`, `--key` reach a management API that terminates TLS
/// itself (`[management.tls]`): the client certificate is the identity the token is
/// bound to, so the admin's token over another workload's certificate is refused (6),
/// and a server certificate from another CA is not trusted (7).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn talks_to_a_tls_management_api_with_a_client_certificate() {
    std::env::remove_var("VAULT_ADDR");
    std::env::remove_var("VAULT_TOKEN");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = p.self_signed(&ca_key).unwrap();
    let issue = |san: rcgen::SanType, name: &str| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.subject_alt_names = vec![san];
        let cert = p.signed_by(&key, &ca, &ca_key).unwrap();
        let (c, k) = (d.join(format!("{name}.crt")), d.join(format!("{name}.key")));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c.display().to_string(), k.display().to_string())
    };
    let ca_file = d.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let ca_file = ca_file.display().to_string();
    let (server_cert, server_key) =
        issue(rcgen::SanType::IpAddress([127, 0, 0, 1].into()), "server");
    let uri = |id: &str| rcgen::SanType::URI(id.try_into().unwrap());
    let admin = issue(uri(ADMIN), "admin");
    let web = issue(uri("spiffe://cluster.local/ns/shop/sa/web"), "web");

    let bao = meshpass_testkit::OpenBao::start();
    bao.enable_transit();
    bao.create_transit_key("meshpass-participant", "ecdsa-p256");
    let issuer = Issuer(p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng));
    let cfg = config_with(
        d,
        &issuer,
        &bao,
        &format!(
            "[management.tls]\ncert_file = {server_cert:?}\nkey_file = {server_key:?}\nclient_ca_file = {ca_file:?}\n"
        ),
    );
    let server = serve(&cfg).await.replace("http://", "https://");
    let token_file = d.join("token");
    std::fs::write(&token_file, issuer.token(ADMIN)).unwrap();
    let ctl = Ctl { server, token_file };
    let tls = |cert: &(String, String)| {
        vec![
            "--cacert".to_string(),
            ca_file.clone(),
            "--cert".into(),
            cert.0.clone(),
            "--key".into(),
            cert.1.clone(),
        ]
    };
    let run = |mut args: Vec<String>| {
        args.extend(["mappings".into(), "list".into(), "-o".into(), "json".into()]);
        args
    };

    let args = run(tls(&admin));
    let (code, out, err) = ctl
        .run(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    assert_eq!(code, 0, "the admin's certificate: {err}");
    assert!(out.contains("web-to-orders"), "{out}");

    let args = run(tls(&web));
    let (code, _, err) = ctl
        .run(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    assert_eq!(code, 6, "the admin's token over web's certificate: {err}");

    // Without --cacert the test CA is not trusted.
    let args = run(tls(&admin)[2..].to_vec());
    let (code, _, err) = ctl
        .run(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    assert_eq!(code, 7, "an untrusted server certificate: {err}");

    // A certificate without its key is a usage error, nothing sent.
    let args = run(tls(&admin)[..4].to_vec());
    let (code, _, err) = ctl
        .run(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    assert_eq!(code, 2, "--cert without --key: {err}");
    assert!(err.contains("--cert and --key"), "{err}");
}
