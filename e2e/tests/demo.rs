//! `make demo ARGS=--once`: the demo binary runs the walkthrough end to end and exits 0.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

#[test]
fn demo_once_walks_through_an_exchange_and_a_rejection_then_exits_zero() {
    let out = Command::new(env!("CARGO_BIN_EXE_meshpass-demo"))
        .arg("--once")
        .output()
        .expect("cannot run meshpass-demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "meshpass-demo --once exited with {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    for line in [
        "[3/8] the caller's JWT-SVID",
        "\"sub\": \"spiffe://cluster.local/ns/demo/sa/frontend\"",
        "POST /token grant_type=token-exchange",
        "exchanges sent by the client sidecar: 0 -> 1",
        "kid    meshpass-participant:v1",
        "\"participant\": \"acme\"",
        "authorization: Bearer ",
        "the original JWT-SVID reached the app: no",
        "served from the filter's cache: exchanges 1 -> 1",
        "HTTP 401",
        "token subject does not match",
        "HTTP 403",
        "mapping batch-echo created",
        "batch's next request: HTTP 200",
        "[8/8] a revocation",
        "revocations add --subject spiffe://cluster.local/ns/demo/sa/frontend",
        "created",
        "refused",
        "\"error_description\":\"revoked: demo: compromised node\"",
        "lifted",
        "frontend is served again",
        "try it yourself",
        "curl -s -H \"Authorization: Bearer $(cat ",
        "stopped; nothing left running.",
    ] {
        assert!(
            stdout.contains(line),
            "demo output lacks {line:?}:\n{stdout}"
        );
    }
}
