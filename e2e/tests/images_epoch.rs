//! `scripts/images.sh check` (`make images-check`) gives the pinned digests whatever
//! the shell exports: the images' dates are the scripts' own.
//!
//! Needs the filter `.wasm` (`MESHPASS_FILTER_WASM` or `make wasm`), skopeo and umoci.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Copies the files `scripts/images.sh check` reads into `root`, with `cacert` standing
/// in for the pinned certifi bundle (downloaded by the script otherwise).
fn images_check_tree(root: &Path) {
    let src = meshpass_testkit::workspace_root();
    let mut files: Vec<PathBuf> = [
        "scripts/images.sh",
        "scripts/oci_image.py",
        "Cargo.toml",
        "images/meshpass-exchange.lock",
        "istio/base/exchange/deployment.yaml",
        "e2e/kind/overlay/kustomization.yaml",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    for e in fs::read_dir(src.join("istio/base/filter")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml") {
            files.push(p.strip_prefix(&src).unwrap().to_path_buf());
        }
    }
    for f in files {
        let to = root.join(&f);
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::copy(src.join(&f), &to).unwrap();
    }
    let certifi = root.join(".tools/certifi-2026.5.20/certifi");
    fs::create_dir_all(&certifi).unwrap();
    let ca = rcgen::generate_simple_self_signed(vec!["ca.test".into()]).unwrap();
    fs::write(certifi.join("cacert.pem"), ca.cert.pem()).unwrap();
}

fn images_check(root: &Path, epoch: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new("bash");
    cmd.arg(root.join("scripts/images.sh"))
        .arg("check")
        .env("MESHPASS_FILTER_WASM", meshpass_testkit::filter_wasm())
        .env_remove("MESHPASS_CHECK_EXCHANGE_IMAGE")
        .env_remove("SOURCE_DATE_EPOCH");
    if let Some(e) = epoch {
        cmd.env("SOURCE_DATE_EPOCH", e);
    }
    cmd.output().expect("cannot run bash")
}

/// `make images-check` (part of `make test`) in a shell that exports SOURCE_DATE_EPOCH
/// (`nix develop` and nix-shell set it to 315532800, Debian build environments to the
/// changelog date): `oci_image.py` takes its timestamps from the caller's variable, so
/// the unchanged `.wasm` gives another digest and the check reports the committed pin
/// stale ("run make images"); `make images` in that shell pins a digest that nobody
/// else reproduces. The pinned digests are only reproducible if the scripts fix the
/// epoch themselves.
#[test]
fn images_check_accepts_the_current_filter_pin_whatever_source_date_epoch_the_shell_exports() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("repo");
    images_check_tree(&root);
    // Pin the filter image the .wasm at hand gives (as `make images-filter` would), so
    // the check is about the environment only.
    let out = Command::new("python3")
        .arg(root.join("scripts/oci_image.py"))
        .args(["wasm", "--wasm"])
        .arg(meshpass_testkit::filter_wasm())
        .arg("--out")
        .arg(tmp.path().join("probe"))
        .args(["--tag", "0.1.0"])
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let current = String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_start_matches("sha256:")
        .to_string();
    let outbound = root.join("istio/base/filter/wasmplugin-outbound.yaml");
    let text = fs::read_to_string(&outbound).unwrap();
    let pinned = text
        .split("meshpass-filter@sha256:")
        .nth(1)
        .map(|s| s[..64].to_string())
        .expect("no filter pin in wasmplugin-outbound.yaml");
    for f in [
        "istio/base/filter/wasmplugin-outbound.yaml",
        "istio/base/filter/wasmplugin-inbound.yaml",
        "istio/base/filter/trafficextension-inbound.yaml",
        "istio/base/filter/envoyfilter-wasm-inbound.yaml",
        "e2e/kind/overlay/kustomization.yaml",
    ] {
        let p = root.join(f);
        let t = fs::read_to_string(&p).unwrap();
        fs::write(&p, t.replace(&pinned, &current)).unwrap();
    }

    let plain = images_check(&root, None);
    assert!(
        plain.status.success(),
        "precondition: images.sh check passes without SOURCE_DATE_EPOCH:\n{}{}",
        String::from_utf8_lossy(&plain.stdout),
        String::from_utf8_lossy(&plain.stderr)
    );
    let nix = images_check(&root, Some("315532800"));
    assert!(
        nix.status.success(),
        "images.sh check with SOURCE_DATE_EPOCH=315532800 exported (same .wasm, same pins) failed:\n{}{}",
        String::from_utf8_lossy(&nix.stdout),
        String::from_utf8_lossy(&nix.stderr)
    );
}
