//! What `meshpassctl` does with answers that are not the API's (HTML or other JSON
//! behind `--server`, an answer too large to read, no answer in time), with partial or
//! malformed input files, and with its output streams: against the real service
//! (SQLite, real OpenBao) started in-process through `tests/common`, or against a
//! minimal HTTP/TCP stand-in playing a server that never answers, answers garbage or
//! answers a given status.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

// --- helpers ---------------------------------------------------------------------------

/// A TCP peer that reads the request and then writes `prefix` (maybe nothing) and never
/// anything more, holding every connection open.
fn stalling_peer(prefix: &'static [u8]) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut b = [0u8; 4096];
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            let _ = s.read(&mut b);
            let _ = s.write_all(prefix);
            held.push(s);
        }
    });
    url
}

fn ctl_for(server: &str, dir: &Path, token: &str) -> Ctl {
    let token_file = dir.join("token");
    std::fs::write(&token_file, token).unwrap();
    Ctl {
        server: server.to_string(),
        token_file,
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

/// `meshpassctl ARGS` as a child whose stdout lines arrive on a channel.
fn spawn_ctl(ctl: &Ctl, args: &[&str]) -> (std::process::Child, mpsc::Receiver<String>) {
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("meshpassctl"))
        .arg("--server")
        .arg(&ctl.server)
        .arg("--token-file")
        .arg(&ctl.token_file)
        .args(args)
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines() {
            let Ok(l) = l else { return };
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

/// Lines from `rx` until `done(lines)` or `within` passed.
fn collect_until(
    rx: &mpsc::Receiver<String>,
    within: Duration,
    done: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let end = Instant::now() + within;
    let mut lines = Vec::new();
    while !done(&lines) {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match rx.recv_timeout(left.min(Duration::from_millis(200))) {
            Ok(l) => lines.push(l),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    lines
}

// --- exit codes and error messages ----------------------------------------------------

/// Each status has its exit code (README "Exit codes"): 404 → 3; 409, 412 → 4; 400, 422
/// → 5; 401, 403 → 6; 502–504 → 7; 413, 500, 501, 505, a redirect and any other status
/// → 1; and the error reads `meshpassctl: CODE: FIELD: MESSAGE`, for reads and writes
/// alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_status_maps_to_its_documented_exit_code_and_the_message_keeps_code_field_and_message(
) {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = fake_http(|_, p| {
        let code: u16 = p
            .rsplit('/')
            .next()
            .and_then(|s| s.strip_prefix('s'))
            .and_then(|s| s.parse().ok())
            .unwrap_or(500);
        let body = json!({"error": format!("e{code}"), "message": format!("m{code}"), "field": format!("f{code}")})
            .to_string();
        let loc = if (300..400).contains(&code) {
            "location: /elsewhere\r\n"
        } else {
            ""
        };
        http(
            &format!("{code} X"),
            &format!("{loc}content-type: application/json\r\n"),
            &body,
        )
    });
    let ctl = ctl_for(&server, dir.path(), "a.b.c");
    let expect: &[(u16, i32)] = &[
        (301, 1),
        (302, 1),
        (307, 1),
        (400, 5),
        (401, 6),
        (403, 6),
        (404, 3),
        (405, 1),
        (409, 4),
        (412, 4),
        (413, 1),
        (422, 5),
        (429, 1),
        (500, 1),
        (501, 1),
        (502, 7),
        (503, 7),
        (504, 7),
        (505, 1),
    ];
    let mut wrong = Vec::new();
    for &(status, want) in expect {
        let name = format!("s{status}");
        for verb in ["get", "delete"] {
            let (code, out, err) = ctl.run(&["mappings", verb, &name]).await;
            let shown = format!("e{status}: f{status}: m{status}");
            if code != want || (status >= 400 && !err.contains(&shown)) {
                wrong.push(format!(
                    "{verb} → {status}: exit {code} (want {want}), stdout {out:?}, stderr {err:?}"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// A server that accepts the connection and never answers is given up on after the
/// timeout (exit 7, "no answer came within"), well within 90 s; so is one that sends a
/// head and stalls the body, and one that answers bytes that are no HTTP: never exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_stalls_its_body_or_answers_garbage_is_given_up_on() {
    let dir = tempfile::tempdir().unwrap();
    let silent = stalling_peer(b"");
    let stalled_body = stalling_peer(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"items\": [",
    );
    let garbage = stalling_peer(b"SSH-2.0-OpenSSH_9.6\r\n\x00\x01\x02 garbage\r\n\r\n");
    let t0 = Instant::now();
    let a = ctl_for(&silent, dir.path(), "a.b.c");
    let b = Ctl {
        server: stalled_body,
        token_file: a.token_file.clone(),
    };
    let c = Ctl {
        server: garbage,
        token_file: a.token_file.clone(),
    };
    let (ra, rb, rc) = tokio::join!(
        a.run(&["mappings", "list"]),
        b.run(&["mappings", "list"]),
        c.run(&["mappings", "list"])
    );
    let took = t0.elapsed();
    eprintln!("silent: {ra:?}\nstalled body: {rb:?}\ngarbage: {rc:?}\ntook {took:?}");
    assert!(took < Duration::from_secs(90), "took {took:?}");
    assert_eq!(ra.0, 7, "a server that never answers: {ra:?}");
    assert!(ra.2.contains("no answer came within"), "{ra:?}");
    assert!(!ra.2.contains("cannot reach"), "{ra:?}");
    assert_ne!(rb.0, 0, "a stalled body: {rb:?}");
    assert!(rb.0 != -1, "killed by the harness's 60 s bound: {rb:?}");
    assert_ne!(rc.0, 0, "garbage: {rc:?}");
}

/// A write that reached the server and got no answer (`keys rotate`, which is not
/// idempotent: a retry rotates again) may have been applied: exit 7 with a message that
/// says no answer came in time and to check before retrying, never "cannot reach"
/// (which reads as "nothing happened, run it again").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_timed_out_after_reaching_the_server_is_not_reported_as_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let silent = stalling_peer(b"");
    let ctl = ctl_for(&silent, dir.path(), "a.b.c");
    let (code, _, err) = ctl.run(&["keys", "rotate"]).await;
    eprintln!("exit {code}: {err}");
    assert_eq!(code, 7, "{err}");
    assert!(
        !err.contains("cannot reach"),
        "the request was sent and may have been applied, yet: {err}"
    );
    for said in [
        "no answer came within",
        silent.as_str(),
        "may have been applied",
        "check before retrying",
    ] {
        assert!(err.contains(said), "{said:?} not in {err}");
    }
}

/// The token is sent only in the `Authorization` header and never printed, whatever
/// fails: a refusal, an outage, a token that is no header value, a bad `--if-match`, a
/// `--server` that is not http(s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_never_printed_whatever_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) =
        fake_http(|_, _| http("401 Unauthorized", "content-type: text/plain\r\n", "no"));
    let secret = "eyJhbGciOiJFUzI1NiJ9.SECRETPAYLOAD.SECRETSIG";
    let mut leaks = Vec::new();
    for (srv, tok, args) in [
        (
            server.as_str(),
            secret.to_string(),
            vec!["mappings", "list"],
        ),
        (
            "http://127.0.0.1:9",
            secret.to_string(),
            vec!["mappings", "list"],
        ),
        (
            server.as_str(),
            format!("{secret}\nSECRETSECONDLINE"),
            vec!["mappings", "list"],
        ),
        (
            server.as_str(),
            secret.to_string(),
            vec!["mappings", "delete", "x", "--if-match", "a\nb"],
        ),
        (
            "ftp://127.0.0.1:9",
            secret.to_string(),
            vec!["mappings", "list"],
        ),
    ] {
        let ctl = ctl_for(srv, dir.path(), &tok);
        let (code, out, err) = ctl.run(&args).await;
        if (out.clone() + &err).contains("SECRET") {
            leaks.push(format!("{srv} {args:?}: exit {code}: {out} {err}"));
        }
    }
    assert!(leaks.is_empty(), "{}", leaks.join("\n"));
}

/// A `--server` whose scheme is neither http nor https (`ftp://`, `tcp://`, a typo) is a
/// usage error (exit 2) naming `--server` and the scheme, not the token or `--if-match`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_url_with_a_scheme_that_is_not_http_is_a_usage_error_naming_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut wrong = Vec::new();
    for s in [
        "ftp://127.0.0.1:9",
        "tcp://127.0.0.1:8081",
        "htp://127.0.0.1:8081",
    ] {
        let ctl = ctl_for(s, dir.path(), "a.b.c");
        let (code, _, err) = ctl.run(&["mappings", "list"]).await;
        let scheme = s.split("://").next().unwrap();
        if code != 2
            || !err.contains("--server")
            || !err.contains(&format!("`{scheme}`"))
            || err.contains("token")
            || err.contains("if-match")
        {
            wrong.push(format!("{s}: exit {code}: {err}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Something else behind `--server` answering every request `200` with an HTML page (a
/// default backend, a web UI, the wrong port-forward): no write is reported as done
/// ("configured", "deleted", "nothing to apply"; the service never saw it). Exit 1,
/// naming the origin and asking whether `--server` is the management API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_answered_by_something_that_is_not_the_api_is_not_reported_as_done() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = fake_http(|_, _| {
        http(
            "200 OK",
            "content-type: text/html\r\n",
            "<html><body>Welcome to nginx!</body></html>",
        )
    });
    let ctl = ctl_for(&server, dir.path(), "a.b.c");
    let m = write(
        dir.path(),
        "m.yaml",
        "name: inv\nsubject: spiffe://cluster.local/ns/shop/*\nresource: inventory\nparticipant: acme\nscopes: [read]\nttl_secs: 300\n",
    );
    let s = write(
        dir.path(),
        "s.yaml",
        "resource: inventory\nscope: read\nclaims: {tier: 1}\n",
    );
    let doc = write(dir.path(), "doc.yaml", "mappings: []\nscopes: []\n");
    let mut zero = Vec::new();
    for args in [
        vec!["mappings", "apply", "-f", &m],
        vec!["scopes", "apply", "-f", &s],
        vec!["mappings", "delete", "inv"],
        vec!["import", "-f", &doc, "--prune"],
        vec!["revocations", "lift", "rv-1"],
        vec!["keys", "rotate"],
        vec!["keys", "retire", "--below", "2"],
    ] {
        let (code, out, err) = ctl.run(&args).await;
        if code != 1
            || !err.contains(&format!("unexpected answer from {server}"))
            || !err.contains("is --server the management API?")
        {
            zero.push(format!("{args:?} → exit {code}: {} {err}", out.trim()));
        }
    }
    assert!(
        zero.is_empty(),
        "writes against an HTML page not refused as unexpected:\n{}",
        zero.join("\n")
    );
}

/// JSON that is not what the API answers (another JSON service behind `--server`): each
/// command checks the shape it needs, so no write is reported as done (a `PUT` answered
/// by an object that does not name what was sent, a `DELETE` answered 200 rather than
/// 204, an import result without `applied`) and no read shown (a key status without
/// `versions`, an export without `mappings`, an introspection without `active`, a list
/// without `items`). Exit 1, "unexpected answer".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_that_is_not_the_api_s_answer_is_refused_by_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = fake_http(|_, _| {
        http(
            "200 OK",
            "content-type: application/json\r\n",
            r#"{"status": "ok", "name": "other", "id": 7}"#,
        )
    });
    let ctl = ctl_for(&server, dir.path(), "a.b.c");
    let m = write(
        dir.path(),
        "m.yaml",
        "name: inv\nsubject: spiffe://cluster.local/ns/shop/*\nresource: inventory\nparticipant: acme\nscopes: [read]\nttl_secs: 300\n",
    );
    let s = write(
        dir.path(),
        "s.yaml",
        "resource: inventory\nscope: read\nclaims: {tier: 1}\n",
    );
    let doc = write(dir.path(), "doc.yaml", "mappings: []\nscopes: []\n");
    let tok = write(dir.path(), "participant", "x.y.z");
    let mut wrong = Vec::new();
    for args in [
        vec!["mappings", "apply", "-f", &m],
        vec!["scopes", "apply", "-f", &s],
        vec!["mappings", "delete", "inv"],
        vec!["scopes", "delete", "inventory", "read"],
        vec!["import", "-f", &doc],
        vec!["revocations", "add", "--jti", "j", "--reason", "r"],
        vec!["revocations", "lift", "rv-1"],
        vec!["keys", "rotate"],
        vec!["keys", "retire", "--below", "2"],
        vec!["keys", "status"],
        vec!["stats"],
        vec!["export"],
        vec!["mappings", "get", "inv"],
        vec!["scopes", "get", "inventory", "read"],
        vec!["revocations", "get", "rv-1"],
        vec!["introspect", "-f", &tok],
        vec!["mappings", "list"],
        vec!["scopes", "list"],
        vec!["revocations", "list"],
        vec!["audit", "tail"],
    ] {
        let (code, out, err) = ctl.run(&args).await;
        if code != 1 || !out.is_empty() || !err.contains("unexpected answer") {
            wrong.push(format!("{args:?} → exit {code}: {} {err}", out.trim()));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// A peer that answers every request `200` with a body longer than
/// [`BEYOND_THE_BOUND`], streamed in 64 KiB chunks (never held whole), announced by its
/// `content-length` or (`announced` false) chunked with no length.
fn endless_peer(announced: bool) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut b = [0u8; 4096];
                let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                let _ = s.read(&mut b);
                let head = if announced {
                    format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {BEYOND_THE_BOUND}\r\n\r\n")
                } else {
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n".to_string()
                };
                if s.write_all(head.as_bytes()).is_err() {
                    return;
                }
                let chunk = vec![b' '; 64 * 1024];
                let mut sent = 0;
                while sent < BEYOND_THE_BOUND {
                    let framed = if announced {
                        s.write_all(&chunk)
                    } else {
                        s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                            .and_then(|()| s.write_all(&chunk))
                            .and_then(|()| s.write_all(b"\r\n"))
                    };
                    // The client stops reading at the bound and closes.
                    if framed.is_err() {
                        return;
                    }
                    sent += chunk.len();
                }
                if !announced {
                    let _ = s.write_all(b"0\r\n\r\n");
                }
            });
        }
    });
    url
}

/// Just over the 16 MiB ctl reads of an answer.
const BEYOND_THE_BOUND: usize = 16 * 1024 * 1024 + 64 * 1024;

/// An answer over 16 MiB (something else behind `--server` streaming without end) is
/// refused (exit 1, naming the bound) rather than read into memory without limit,
/// whether its length is announced or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_over_16_mib_is_refused_naming_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    for announced in [true, false] {
        let ctl = ctl_for(&endless_peer(announced), dir.path(), "a.b.c");
        let (code, out, err) = ctl.run(&["mappings", "list"]).await;
        assert_eq!(code, 1, "announced {announced}: {out} {err}");
        assert!(
            err.contains("over the 16 MiB"),
            "announced {announced}: {err}"
        );
        assert!(out.is_empty(), "{out}");
    }
}

// --- against the real service ----------------------------------------------------------

/// "Keep mappings in Git": `export > policy.yaml` then `import -f policy.yaml` is a no-op (every entry `unchanged`, nothing added, changed or kept), in YAML
/// and in JSON (`-o json`), whatever the values: strings YAML would read as something
/// else, line breaks, control characters, Unicode line separators, big and small
/// numbers, nested claims, awkward claim names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_import_of_awkward_values_is_a_no_op_in_yaml_and_in_json() {
    let dir = tempfile::tempdir().unwrap();
    let (_bao, _issuer, ctl, _) = start_service(dir.path()).await;
    let strings = [
        "yes",
        "no",
        "on",
        "off",
        "y",
        "n",
        "true",
        "null",
        "~",
        "",
        "  lead",
        "trail  ",
        "multi\nline\n",
        "multi\nline",
        "\n",
        "a\r\nb",
        "tab\tx",
        "ctl\u{1}x",
        "nul\u{0}x",
        "nel\u{85}x",
        "ls\u{2028}x",
        "ps\u{2029}x",
        "bom\u{feff}x",
        "\u{feff}",
        "😀",
        "'quote",
        "\"dq",
        "- dash",
        ": colon",
        "a: b",
        "#hash",
        "a #b",
        "@at",
        "`bt",
        "%pct",
        "!tag",
        "*alias",
        "&anchor",
        "{",
        "[",
        "|",
        "> fold",
        "0x10",
        "0o17",
        "1e3",
        "1_000",
        ".inf",
        "-.inf",
        ".nan",
        "007",
        "+1",
        "2024-01-01",
        "12:30",
        "=",
        "<<",
        "\\back",
        " ",
        "\u{a0}nbsp",
        "x\u{a0}",
        "trailing\n\n",
        "\n\nleading",
        " \n ",
        "x\u{7f}",
        "\u{fffe}",
        "é",
        "\u{10ffff}",
    ];
    let mut claims = serde_json::Map::new();
    for (i, s) in strings.iter().enumerate() {
        claims.insert(format!("s{i:02}"), json!(s));
    }
    let numbers = json!([
        0,
        -0.0,
        1.0,
        0.1,
        1e-7,
        5e-324,
        1.7976931348623157e308,
        18446744073709551615u64,
        -9223372036854775808i64,
        1e16,
        123456789012345678u64,
        0.30000000000000004,
        2.5e-10,
        100000000000000000000.0
    ]);
    for (i, n) in numbers.as_array().unwrap().iter().enumerate() {
        claims.insert(format!("n{i:02}"), n.clone());
    }
    claims.insert(
        "nested".into(),
        json!({"a": [1, {"b": null}], "": "empty key", "yes": [[], {}], "c": [null, true, false]}),
    );
    let mut names = serde_json::Map::new();
    for (i, k) in [
        "yes",
        "null",
        "1",
        "a: b",
        "#x",
        "~",
        "é",
        "<<",
        "? q",
        "- d",
        " sp",
        "*a",
        "true",
        "0x1",
        "[",
        "{x}",
        "k\u{2028}",
    ]
    .iter()
    .enumerate()
    {
        names.insert((*k).to_string(), json!(i));
    }
    let doc = json!({
        "mappings": [{
            "name": "rt", "subject": "spiffe://cluster.local/ns/rt/*", "resource": "rt-res",
            "participant": "yes", "scopes": ["values", "names"], "ttl_secs": 300,
            "audiences": [], "allowed_callers": [], "allowed_actors": []
        }],
        "scopes": [
            {"resource": "rt-res", "scope": "values", "claims": claims},
            {"resource": "rt-res", "scope": "names", "claims": names},
        ]
    });
    let f = write(dir.path(), "seed.json", &doc.to_string());
    let (code, out, err) = ctl.run(&["import", "-f", &f]).await;
    assert_eq!(code, 0, "seeding: {out} {err}");
    let (code, before, err) = ctl.run(&["export", "-o", "json"]).await;
    assert_eq!(code, 0, "{err}");

    let mut problems = Vec::new();
    for fmt in ["yaml", "json"] {
        let (code, exported, err) = ctl.run(&["export", "-o", fmt]).await;
        assert_eq!(code, 0, "{err}");
        let f = write(dir.path(), &format!("policy.{fmt}"), &exported);
        let (code, out, err) = ctl
            .run(&["import", "--dry-run", "--prune", "-f", &f, "-o", "json"])
            .await;
        if code != 0 {
            problems.push(format!("{fmt}: dry run exit {code}: {err}"));
            continue;
        }
        let diff: Value = serde_json::from_str(&out).unwrap();
        for k in ["added", "changed", "removed"] {
            if diff[k].as_array().is_some_and(|a| !a.is_empty()) {
                problems.push(format!("{fmt}: {k} {}", diff[k]));
            }
        }
        // Applying it changes nothing either.
        let (code, _, err) = ctl.run(&["import", "--prune", "-f", &f]).await;
        if code != 0 {
            problems.push(format!("{fmt}: import exit {code}: {err}"));
        }
        let (_, after, _) = ctl.run(&["export", "-o", "json"]).await;
        if after != before {
            problems.push(format!("{fmt}: export after import differs"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Lists follow the API's cursors to the end: more mappings and scope rows
/// than one page (1000) holds, names in mixed case (byte order is not alphabetical):
/// `mappings list` and `scopes list` give every one exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_longer_than_one_page_give_every_item_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (_bao, _issuer, ctl, _) = start_service(dir.path()).await;
    let n = 2105;
    let mut mappings = vec![
        json!({"name": "web-to-orders", "subject": "spiffe://cluster.local/ns/shop/sa/web",
        "resource": "orders", "participant": "acme", "scopes": ["read"], "ttl_secs": 600}),
    ];
    let mut scopes = Vec::new();
    for i in 0..n {
        let name = if i % 3 == 0 {
            format!("PG-{i:04}")
        } else {
            format!("pg-{i:04}")
        };
        // Resources that are prefixes of one another (pg1, pg10, pg100 ...).
        let resource = format!("pg{i}");
        mappings.push(
            json!({"name": name, "subject": format!("spiffe://cluster.local/ns/p/sa/m{i}"),
            "resource": resource, "participant": "acme", "scopes": ["s", "s.x"], "ttl_secs": 60}),
        );
        scopes.push(json!({"resource": resource, "scope": "s", "claims": {format!("k{i}"): i}}));
        if i % 2 == 0 {
            scopes.push(
                json!({"resource": resource, "scope": "s.x", "claims": {format!("x{i}"): i}}),
            );
        }
    }
    let want_m = mappings.len();
    let want_s = scopes.len();
    let f = write(
        dir.path(),
        "many.json",
        &json!({"mappings": mappings, "scopes": scopes}).to_string(),
    );
    let (code, _, err) = ctl.run(&["import", "-f", &f]).await;
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = ctl.run(&["mappings", "list", "-o", "json"]).await;
    assert_eq!(code, 0, "{err}");
    let got: Vec<Value> = serde_json::from_str(&out).unwrap();
    let mut names: Vec<String> = got
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    let listed = names.len();
    names.sort();
    names.dedup();
    assert_eq!(
        (listed, names.len()),
        (want_m, want_m),
        "mappings listed / distinct"
    );
    let (code, out, err) = ctl.run(&["scopes", "list", "-o", "json"]).await;
    assert_eq!(code, 0, "{err}");
    let got: Vec<Value> = serde_json::from_str(&out).unwrap();
    let mut keys: Vec<String> = got
        .iter()
        .map(|s| format!("{}\0{}", s["resource"], s["scope"]))
        .collect();
    let listed = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!(
        (listed, keys.len()),
        (want_s, want_s),
        "scope rows listed / distinct"
    );
}

/// `mappings apply` and `scopes apply` check every entry of the file before sending any:
/// a list whose second entry has no name, the name `..` (no URL can address it), or no
/// scope is refused (exit 2, naming the entry), and nothing is written, not even the
/// first entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_of_a_file_with_a_malformed_entry_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_bao, _issuer, ctl, _) = start_service(dir.path()).await;
    let good = |name: &str| {
        json!({"name": name, "subject": "spiffe://cluster.local/ns/shop/*", "resource": format!("r-{name}"),
            "participant": "acme", "scopes": ["read"], "ttl_secs": 300})
    };
    let mut wrote = Vec::new();
    for (i, bad) in [
        json!({"subject": "spiffe://cluster.local/ns/x/*", "resource": "x", "participant": "acme", "ttl_secs": 300}),
        json!({"name": "..", "subject": "spiffe://cluster.local/ns/x/*", "resource": "x", "participant": "acme", "ttl_secs": 300}),
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("early{i}");
        let f = write(
            dir.path(),
            &format!("list{i}.json"),
            &json!([good(&name), bad]).to_string(),
        );
        let (code, out, err) = ctl.run(&["mappings", "apply", "-f", &f]).await;
        assert_eq!(code, 2, "{out} {err}");
        assert!(err.contains("entry 2 of 2"), "{err}");
        assert!(out.is_empty(), "nothing reported written: {out}");
        let (got, _, _) = ctl.run(&["mappings", "get", &name]).await;
        if got != 3 {
            wrote.push(format!(
                "{name} was written although the file was refused (exit 2): {}",
                out.trim()
            ));
        }
    }
    // Scope rows likewise.
    let f = write(
        dir.path(),
        "rows.yaml",
        "- {resource: orders, scope: read, claims: {tier: 1}}\n- {resource: orders, claims: {x: 1}}\n",
    );
    let (code, out, err) = ctl.run(&["scopes", "apply", "-f", &f]).await;
    assert_eq!(code, 2, "{out} {err}");
    assert!(
        err.contains("entry 2 of 2") && err.contains("`scope`"),
        "{err}"
    );
    if ctl.run(&["scopes", "get", "orders", "read"]).await.0 != 3 {
        wrote.push(format!("scope orders/read was written: {}", out.trim()));
    }
    assert!(wrote.is_empty(), "{}", wrote.join("\n"));
}

/// `apply` of a file naming a field twice is refused (exit 2, naming the entry and the
/// field) and writes nothing, as the API (its typed parse: "duplicate field") and
/// `import` of the same JSON refuse it: the last value is never silently kept. In YAML
/// likewise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_of_json_naming_a_field_twice_is_refused_as_the_api_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let (_bao, _issuer, ctl, _) = start_service(dir.path()).await;
    let m = r#"{"name": "dup", "subject": "spiffe://cluster.local/ns/shop/*", "resource": "dup-res", "participant": "acme", "scopes": ["read"], "ttl_secs": 60, "ttl_secs": 3000}"#;
    let doc = format!(r#"{{"mappings": [{m}]}}"#);
    let fi = write(dir.path(), "doc.json", &doc);
    let (icode, _, ierr) = ctl.run(&["import", "--dry-run", "-f", &fi]).await;
    eprintln!("import of the same JSON: exit {icode}: {ierr}");
    let fa = write(dir.path(), "m.json", m);
    let (code, out, err) = ctl.run(&["mappings", "apply", "-f", &fa]).await;
    let (_, got, _) = ctl.run(&["mappings", "get", "dup", "-o", "json"]).await;
    assert!(
        code != 0 && icode != 0,
        "import exit {icode}; apply exit {code} {out} {err}; stored: {got}"
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("`ttl_secs`") && err.contains("twice"), "{err}");
    assert_eq!(ctl.run(&["mappings", "get", "dup"]).await.0, 3, "{got}");
    // A list entry, in YAML: the message names which entry.
    let fy = write(
        dir.path(),
        "rows.yaml",
        "- {resource: dup-res, scope: read, claims: {tier: 1}}\n- resource: dup-res\n  scope: write\n  claims: {tier: 1}\n  claims: {tier: 2}\n",
    );
    let (code, out, err) = ctl.run(&["scopes", "apply", "-f", &fy]).await;
    assert_eq!(code, 2, "{out} {err}");
    assert!(err.contains("`[1]`") && err.contains("`claims`"), "{err}");
    assert_eq!(
        ctl.run(&["scopes", "get", "dup-res", "read"]).await.0,
        3,
        "nothing written"
    );
}

/// `audit tail --follow` prints each new event once, none skipped, in one form
/// throughout: with `-o json` each line is one JSON event, with `-o yaml` each event is
/// its own YAML document after `---`, so the whole output reads as a YAML stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_tail_follow_prints_each_new_event_once_and_yaml_output_stays_yaml() {
    let dir = tempfile::tempdir().unwrap();
    let (_bao, _issuer, ctl, _) = start_service(dir.path()).await;
    let mk = |i: usize| {
        format!("name: f{i}\nsubject: spiffe://cluster.local/ns/f{i}/*\nresource: f{i}\nparticipant: acme\nscopes: [read]\nttl_secs: 60\n")
    };
    let f = write(dir.path(), "f0.yaml", &mk(0));
    assert_eq!(ctl.run(&["mappings", "apply", "-f", &f]).await.0, 0);

    let (mut json_child, json_rx) = spawn_ctl(
        &ctl,
        &["audit", "tail", "-n", "1", "--follow", "-o", "json"],
    );
    let (mut yaml_child, yaml_rx) = spawn_ctl(
        &ctl,
        &["audit", "tail", "-n", "1", "--follow", "-o", "yaml"],
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 1..=5 {
        let f = write(dir.path(), &format!("f{i}.yaml"), &mk(i));
        assert_eq!(ctl.run(&["mappings", "apply", "-f", &f]).await.0, 0);
    }
    let has_all = |lines: &[String]| {
        let all = lines.join("\n");
        (1..=5).all(|i| all.contains(&format!("mappings/f{i}")))
    };
    let json_lines = tokio::task::spawn_blocking(move || {
        collect_until(&json_rx, Duration::from_secs(30), has_all)
    })
    .await
    .unwrap();
    let yaml_lines = tokio::task::spawn_blocking(move || {
        collect_until(&yaml_rx, Duration::from_secs(30), has_all)
    })
    .await
    .unwrap();
    let _ = json_child.kill();
    let _ = yaml_child.kill();
    let _ = json_child.wait();
    let _ = yaml_child.wait();

    for l in &json_lines {
        let e: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(e["target"].is_string(), "not an event: {l}");
    }
    let json_all = json_lines.join("\n");
    let mut counts = Vec::new();
    for i in 0..=5 {
        counts.push(json_all.matches(&format!("\"mappings/f{i}\"")).count());
    }
    assert_eq!(counts, vec![1; 6], "events f0..f5 once each:\n{json_all}");

    let yaml_all = yaml_lines.join("\n") + "\n";
    let mut docs = Vec::new();
    let mut parse_error = None;
    for d in serde_yaml::Deserializer::from_str(&yaml_all) {
        match <Value as serde::Deserialize>::deserialize(d) {
            Ok(v) => docs.push(v),
            Err(e) => {
                parse_error = Some(e.to_string());
                break;
            }
        }
    }
    assert!(
        parse_error.is_none(),
        "`audit tail --follow -o yaml` printed no YAML ({parse_error:?}):\n{yaml_all}"
    );
    assert!(
        docs.iter().all(|d| d["target"].is_string()),
        "each YAML document is one event:\n{yaml_all}"
    );
    let mut counts = Vec::new();
    for i in 0..=5 {
        let t = format!("mappings/f{i}");
        counts.push(docs.iter().filter(|d| d["target"] == t.as_str()).count());
    }
    assert_eq!(counts, vec![1; 6], "events f0..f5 once each:\n{yaml_all}");
}

/// An HTML `200` is no answer to show: no key status (an empty key table would read as
/// "no keys"), no statistics, no mapping, no revocation, no introspection result
/// (`ACTIVE -`), no export. Exit 1, nothing printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_answered_by_something_that_is_not_the_api_is_not_shown_as_an_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = fake_http(|_, _| {
        http(
            "200 OK",
            "content-type: text/html\r\n",
            "<html><body>Welcome to nginx!</body></html>",
        )
    });
    let ctl = ctl_for(&server, dir.path(), "a.b.c");
    let tok = write(dir.path(), "participant", "x.y.z");
    let mut zero = Vec::new();
    for args in [
        vec!["keys", "status"],
        vec!["stats"],
        vec!["mappings", "get", "inv"],
        vec!["revocations", "get", "rv-1"],
        vec!["introspect", "-f", &tok],
        vec!["export"],
    ] {
        let (code, out, err) = ctl.run(&args).await;
        if code != 1 || !out.is_empty() {
            zero.push(format!(
                "{args:?} → exit {code}: {} {err}",
                out.trim().replace('\n', " | ")
            ));
        }
    }
    assert!(
        zero.is_empty(),
        "an HTML page shown as an answer:\n{}",
        zero.join("\n")
    );
}
