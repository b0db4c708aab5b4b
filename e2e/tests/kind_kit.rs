//! The kind+Istio kit's scripts (`e2e/kind/`), checked without a cluster: the parts of
//! `test.sh` that read what the mesh answered are run on answers shaped like the real
//! images' (the kit itself is not CI-tested: it needs Docker and kind).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod manifests;

use std::process::Command;

use manifests::root;

/// The lines of `e2e/kind/test.sh` from the first one starting with `from` up to (not
/// including) the first one after it starting with `to`.
fn test_sh_lines(from: &str, to: &str) -> String {
    let text = std::fs::read_to_string(root().join("e2e/kind/test.sh")).unwrap();
    let start = text
        .lines()
        .position(|l| l.starts_with(from))
        .unwrap_or_else(|| panic!("test.sh has no line starting with {from:?}"));
    text.lines()
        .skip(start)
        .take_while({
            let mut first = true;
            move |l| std::mem::take(&mut first) || !l.starts_with(to)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn b64url(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// test.sh step 1 reads the participant token out of what the kit's `echo`
/// (`mendhak/http-https-echo:35`, demo-apps.yaml) answers. That image answers with
/// Express' `res.json` under `app.set('json spaces', 2)` (its index.js), i.e.
/// `JSON.stringify(echo, null, 2)`: one header per line, `"authorization": "Bearer …"`
/// with a space after the colon. The kit's check must find the token in that body, or
/// `make -C e2e/kind test` fails ("echo saw no bearer token") on a mesh that works.
#[test]
fn the_kit_test_finds_the_participant_token_in_what_the_echo_image_answers() {
    let claims = serde_json::json!({
        "iss": "https://meshpass-exchange.meshpass.svc.cluster.local",
        "sub": "spiffe://cluster.local/ns/demo/sa/frontend",
        "aud": "echo",
        "participant": "demo-frontend",
        "scope": "echo.read",
    });
    let token = format!(
        "{}.{}.{}",
        b64url(br#"{"alg":"ES256","typ":"JWT","kid":"meshpass-participant:v1"}"#),
        b64url(claims.to_string().as_bytes()),
        b64url(&[7u8; 64])
    );
    // What mendhak/http-https-echo:35 sends back (its `echo` object, 2-space JSON; the
    // same layout as serde_json's pretty printer).
    let body = serde_json::to_string_pretty(&serde_json::json!({
        "path": "/orders",
        "headers": {
            "host": "echo.demo.svc.cluster.local:8080",
            "user-agent": "curl/8.10.1",
            "accept": "*/*",
            "x-forwarded-proto": "http",
            "x-request-id": "0f9c1c1e-8a7e-4f5e-9a51-3c1d1c7f0e11",
            "authorization": format!("Bearer {token}"),
            "x-participant": "demo-frontend",
        },
        "method": "GET",
        "body": "",
        "fresh": false,
        "hostname": "echo.demo.svc.cluster.local",
        "ip": "::ffff:127.0.0.6",
        "ips": [],
        "protocol": "http",
        "query": {},
        "subdomains": [],
        "xhr": false,
        "os": {"hostname": "echo-5d8f7c9b6-abcde"},
        "connection": {}
    }))
    .unwrap();
    assert!(body.contains("\"authorization\": \"Bearer "), "{body}");
    // Step 1 of test.sh as written, after `body=$(…)`, up to its `ok`.
    let step = test_sh_lines("auth=$(", "ok ");
    let script = format!(
        "set -euo pipefail\nfail() {{ echo \"FAIL: $*\" >&2; exit 1; }}\nSA_TOKEN=service-account-token\nbody=$(cat)\n{step}\nprintf '%s' \"$auth\"\n"
    );
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "e2e/kind/test.sh step 1 fails on the body mendhak/http-https-echo:35 answers \
         (pretty-printed JSON, `\"authorization\": \"Bearer …\"`), although echo did receive \
         the participant token:\n{}\n--- the step ---\n{step}",
        stderr
            .lines()
            .take(3)
            .map(|l| l.chars().take(200).collect::<String>())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), token);
}
