#!/usr/bin/env bash
# meshpass's two OCI images, built without Docker (scripts/oci_image.py):
#   target/images/meshpass-filter    (+ .tar, .digest)  the .wasm in Istio's Wasm image format
#   target/images/meshpass-exchange  (+ .tar, .digest)  the static musl binary, CA bundle, uid 65532
#
#   scripts/images.sh build   (make images) builds both from the current sources and pins
#                             their digests into every manifest that references them
#   scripts/images.sh build-filter   the same for the filter image only (make images-filter)
#   scripts/images.sh check   (make images-check, part of make test) rebuilds the filter
#                             image from the built .wasm and the exchange image's layout,
#                             inspects both with skopeo and umoci, and fails when a
#                             manifest pins another digest than the current sources give
#   scripts/images.sh sources-hash   prints the hash of the exchange image's inputs
#                             (its sources, the CA bundle's version, `rustc -V`)
#
# The exchange image costs a release musl build with LTO (minutes on 2 cores), so
# `check` rebuilds it only when MESHPASS_CHECK_EXCHANGE_IMAGE=1. By default it checks the
# digest pinned in the manifests against images/meshpass-exchange.lock, which `build`
# writes with the hash of the sources it built from (and warns when they, or the
# compiler, changed), and the layout's structure with a stand-in binary.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
MODE=${1:-}
TAG=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
OUT=$ROOT/target/images
WASM=${MESHPASS_FILTER_WASM:-$ROOT/target/wasm32-wasip1/wasm-release/meshpass_filter.wasm}
MUSL_TARGET=x86_64-unknown-linux-musl
EXCHANGE_BIN=$ROOT/target/$MUSL_TARGET/release/meshpass-exchange
CERTIFI_VERSION=2026.5.20
CERTIFI_WHEEL_SHA256=3c52e209ba0a4ad7aebe60436a4ab349c39e1e602e8c134221e546902ad25897
CA_BUNDLE=$ROOT/.tools/certifi-$CERTIFI_VERSION/certifi/cacert.pem
# The images' one date (oci_image.py's timestamps, the musl build's C __DATE__), whatever
# the shell exports: nix shells and Debian build environments set SOURCE_DATE_EPOCH, and
# honouring it made `check` fail and `build` pin digests no other host reproduces.
export SOURCE_DATE_EPOCH=1767225600
LOCK=$ROOT/images/meshpass-exchange.lock
# Every file that pins an image by digest.
MANIFESTS=(istio/base/filter/*.yaml istio/base/exchange/deployment.yaml e2e/kind/overlay/kustomization.yaml)

log() { printf '[images] %s\n' "$*"; }
die() { printf '[images] FAIL: %s\n' "$*" >&2; exit 1; }

ca_bundle() { # Mozilla's CA bundle from a pinned PyPI release: the same bytes everywhere
  if [ ! -f "$CA_BUNDLE" ]; then
    "$ROOT/scripts/install-wheel.sh" certifi "$CERTIFI_VERSION" "$CERTIFI_WHEEL_SHA256" \
      "$ROOT/.tools/certifi-$CERTIFI_VERSION"
  fi
}

build_wasm() {
  cargo build -p meshpass-filter --target wasm32-wasip1 --profile wasm-release
}

# Reproducible across checkouts: no absolute paths of this clone or of CARGO_HOME in the
# binary (panic locations), static C parts through musl-gcc.
build_exchange() {
  local cargo_home=${CARGO_HOME:-$HOME/.cargo}
  # SOURCE_DATE_EPOCH: GCC's __DATE__/__TIME__, which mimalloc embeds ("built on …"),
  # become the images' fixed date instead of the build's, so two hosts build the same
  # binary (cc reruns the C builds when it changes).
  SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH \
  CC_x86_64_unknown_linux_musl=musl-gcc \
  CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_RUSTFLAGS="--remap-path-prefix=$ROOT=/meshpass --remap-path-prefix=$cargo_home=/cargo" \
    cargo build -p meshpass-exchange --release --target "$MUSL_TARGET"
  file_is_static "$EXCHANGE_BIN"
}

file_is_static() {
  # Read whole, then matched: `readelf | grep -q` could die of SIGPIPE under pipefail
  # and pass a dynamic binary.
  local headers; headers=$(readelf -l "$1")
  if grep -q 'Requesting program interpreter' <<<"$headers"; then
    die "$1 is dynamically linked"
  fi
}

# The sources the exchange image is built from: the content of every tracked file that
# goes into it, as it is in the work tree (this script holds the build flags), and the
# compiler (no rust-toolchain.toml pins it: another rustc builds another binary). Docs,
# tests, benches and examples do not, so a change to them leaves the pin current
# (nothing under src/ reads a Markdown file).
exchange_sources_hash() {
  {
    git ls-files -z Cargo.toml Cargo.lock core exchange-svc scripts/oci_image.py scripts/images.sh \
      ':(exclude,glob)**/*.md' ':(exclude)core/tests' ':(exclude)core/benches' \
      ':(exclude)exchange-svc/tests' ':(exclude)exchange-svc/benches' \
      ':(exclude)exchange-svc/examples' \
      | sort -z | xargs -0 sha256sum
    printf 'certifi %s\n' "$CERTIFI_VERSION"
    printf '%s\n' "$(rustc -V)"
  } | sha256sum | cut -d' ' -f1
}

layout_filter() {
  [ -f "$WASM" ] || die "$WASM is missing: run make wasm"
  python3 scripts/oci_image.py wasm --wasm "$WASM" --out "$OUT/meshpass-filter" --tag "$TAG"
}

layout_exchange() { # binary [output dir]
  ca_bundle
  python3 scripts/oci_image.py exchange --binary "$1" --ca-bundle "$CA_BUNDLE" \
    --out "${2:-$OUT/meshpass-exchange}" --tag "$TAG"
}

pin() { # image-name digest: rewrite every reference to it in the manifests
  local name=$1 digest=$2 hex=${2#sha256:}
  local f
  # A failed build inside "$(…)" does not stop the script (set -e ignores it there):
  # never write anything but a whole digest into the manifests.
  if ! [[ $hex =~ ^[0-9a-f]{64}$ ]]; then
    echo "[images] not pinning $name: '$digest' is not a sha256 digest (did its build fail?)" >&2
    exit 1
  fi
  for f in "${MANIFESTS[@]}"; do
    python3 - "$f" "$name" "$hex" <<'EOF'
import re, sys
path, name, hex_ = sys.argv[1:]
text = open(path).read()
new = re.sub(r"(/%s)(@sha256:[0-9a-f]{64}|:[\w.-]+)" % re.escape(name), r"\g<1>@sha256:" + hex_, text)
if name == "meshpass-filter":
    # the WasmPlugin/TrafficExtension/EnvoyFilter checksum next to the url
    new = re.sub(r'(\bsha256: )"?[0-9a-f]{64}"?', r'\g<1>"%s"' % hex_, new)
if new != text:
    open(path, "w").write(new)
    print("[images] pinned %s@sha256:%s… in %s" % (name, hex_[:12], path))
EOF
  done
  log "$name: $digest"
}

pinned() { # image-name: the digests the manifests pin, one per line
  grep -ho "/$1@sha256:[0-9a-f]\{64\}" "${MANIFESTS[@]}" | sed 's/.*@//' | sort -u
}

expect_pinned() { # image-name digest
  local got
  got=$(pinned "$1" || true) # grep finding nothing is the error reported next
  [ -n "$got" ] || die "no manifest pins $1 by digest"
  [ "$got" = "$2" ] || die "manifests pin $1 at $(echo "$got" | tr '\n' ' ')but the current sources give $2: run make images"
}

inspect_filter() {
  local dir=$OUT/meshpass-filter raw
  raw=$(skopeo inspect --raw "oci:$dir:$TAG")
  python3 - "$raw" "$WASM" "$dir" <<'EOF'
import hashlib, json, sys
m = json.loads(sys.argv[1])
wasm = open(sys.argv[2], "rb").read()
assert m["config"]["mediaType"] == "application/vnd.module.wasm.config.v1+json", m["config"]
# Istio's fetcher takes the *oci* variant only with exactly two layers, one the module.
types = sorted(l["mediaType"] for l in m["layers"])
assert types == ["application/vnd.module.wasm.config.v1+json",
                 "application/vnd.module.wasm.content.layer.v1+wasm"], types
layer = next(l for l in m["layers"] if l["mediaType"].endswith("+wasm"))
assert layer["digest"] == "sha256:" + hashlib.sha256(wasm).hexdigest(), "the layer is the .wasm"
assert layer["size"] == len(wasm)
EOF
  skopeo inspect --raw "oci-archive:$dir.tar:$TAG" >/dev/null
  log "skopeo: meshpass-filter layout and archive are Istio Wasm images"
}

inspect_exchange() { # [run] [layout dir]
  local dir=${2:-$OUT/meshpass-exchange} cfg bundle
  cfg=$(skopeo inspect --config "oci:$dir:$TAG")
  skopeo inspect "oci-archive:$dir.tar:$TAG" >/dev/null
  bundle=$(mktemp -d)
  umoci unpack --rootless --image "$dir:$TAG" "$bundle/b" >/dev/null
  python3 - "$cfg" "$bundle/b" <<'EOF'
import json, os, sys
cfg, bundle = json.loads(sys.argv[1]), sys.argv[2]
c = cfg["config"]
assert c["User"] == "65532:65532", c["User"]
assert c["Entrypoint"] == ["/usr/local/bin/meshpass-exchange"], c["Entrypoint"]
assert cfg["os"] == "linux" and cfg["architecture"] == "amd64"
root = os.path.join(bundle, "rootfs")
for shell in ("bin/sh", "bin/bash", "bin/busybox", "usr/bin/sh"):
    assert not os.path.lexists(os.path.join(root, shell)), "the image has a shell: " + shell
exe = os.path.join(root, "usr/local/bin/meshpass-exchange")
assert os.access(exe, os.X_OK), "binary missing or not executable"
assert b"BEGIN CERTIFICATE" in open(os.path.join(root, "etc/ssl/certs/ca-certificates.crt"), "rb").read()
assert ":65532:65532:" in open(os.path.join(root, "etc/passwd")).read()
rt = json.load(open(os.path.join(bundle, "config.json")))
assert rt["process"]["user"]["uid"] == 65532, rt["process"]["user"]
EOF
  if [ "${1:-}" = run ]; then
    # The real binary starts inside the image's own root: nothing is missing (static).
    chroot --userspec=65532:65532 "$bundle/b/rootfs" /usr/local/bin/meshpass-exchange --help >/dev/null \
      || die "meshpass-exchange does not start inside its image"
    log "the binary starts inside the unpacked image (chroot, uid 65532)"
  fi
  rm -rf "$bundle"
  log "skopeo + umoci: meshpass-exchange runs as 65532, has a CA bundle and no shell"
}

# Pushes layouts to a real registry (Debian's docker-registry: the distribution registry
# of `registry:2`, on a free loopback port) the way an operator does, and reads each back
# by the digest its .digest file names: the registry accepts the image, keeps the digest.
registry_roundtrip() { # layout-dir...
  command -v docker-registry >/dev/null || die "docker-registry missing: run make setup"
  local tmp port pid dir name digest got
  tmp=$(mktemp -d)
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  printf 'version: 0.1\nlog: {level: error}\nstorage: {filesystem: {rootdirectory: %s/data}}\nhttp: {addr: 127.0.0.1:%s}\n' \
    "$tmp" "$port" > "$tmp/config.yml"
  docker-registry serve "$tmp/config.yml" > "$tmp/log" 2>&1 &
  pid=$!
  python3 - "$port" <<'EOF' || { kill "$pid"; die "the registry did not start: $(cat "$tmp/log")"; }
import sys, time, urllib.request
for _ in range(100):
    try:
        urllib.request.urlopen("http://127.0.0.1:%s/v2/" % sys.argv[1], timeout=1)
        sys.exit(0)
    except Exception:
        time.sleep(0.1)
sys.exit(1)
EOF
  for dir in "$@"; do
    name=$(basename "$dir")
    digest=$(cat "$dir.digest")
    skopeo copy --quiet --preserve-digests --dest-tls-verify=false \
      "oci-archive:$dir.tar:$TAG" "docker://127.0.0.1:$port/$name:$TAG" \
      || { kill "$pid"; die "the registry refused $name: $(cat "$tmp/log")"; }
    got=$(skopeo inspect --raw --tls-verify=false "docker://127.0.0.1:$port/$name@$digest" | sha256sum | cut -d' ' -f1)
    [ "sha256:$got" = "$digest" ] || { kill "$pid"; die "$name came back as sha256:$got, pushed $digest"; }
  done
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  rm -rf "$tmp"
  log "registry: pushed and pulled back by digest: $*"
}

case "$MODE" in
  build)
    build_wasm
    pin meshpass-filter "$(layout_filter)"
    inspect_filter
    build_exchange
    digest=$(layout_exchange "$EXCHANGE_BIN")
    inspect_exchange run
    pin meshpass-exchange "$digest"
    registry_roundtrip "$OUT/meshpass-filter" "$OUT/meshpass-exchange"
    printf '%s %s\n' "$(exchange_sources_hash)" "$digest" > "$LOCK"
    log "wrote $LOCK; push with: skopeo copy oci-archive:target/images/NAME.tar:$TAG docker://REGISTRY/NAME:$TAG"
    ;;
  build-filter) # only the filter (no musl build): after a change of filter/ or core/
    build_wasm
    pin meshpass-filter "$(layout_filter)"
    inspect_filter
    ;;
  check)
    expect_pinned meshpass-filter "$(layout_filter)"
    inspect_filter
    [ -f "$LOCK" ] || die "$LOCK is missing: run make images"
    read -r lock_sources lock_digest < "$LOCK"
    expect_pinned meshpass-exchange "$lock_digest"
    if [ "${MESHPASS_CHECK_EXCHANGE_IMAGE:-0}" = 1 ]; then
      build_exchange
      expect_pinned meshpass-exchange "$(layout_exchange "$EXCHANGE_BIN")"
      inspect_exchange run
      registry_roundtrip "$OUT/meshpass-filter" "$OUT/meshpass-exchange"
    else
      # A rebuild of the static service binary costs minutes of CPU, so a stale pin is
      # reported, not fatal: `make images` before publishing images re-pins it.
      [ "$lock_sources" = "$(exchange_sources_hash)" ] \
        || log "warning: exchange-svc, core, Cargo.lock or rustc ($(rustc -V)) changed since $LOCK was written; the pinned exchange image is from other sources: run make images before publishing"
      # The layout's structure, with this machine's coreutils `true` standing in for the
      # binary (the digest then differs, and is not compared), in a directory of its own
      # so that target/images/meshpass-exchange stays the real image.
      layout_exchange "$(type -P true)" "$OUT/structure-check/meshpass-exchange" >/dev/null
      inspect_exchange no-run "$OUT/structure-check/meshpass-exchange"
      registry_roundtrip "$OUT/meshpass-filter" "$OUT/structure-check/meshpass-exchange"
    fi
    log "ok: the manifests pin the images the current sources build"
    ;;
  sources-hash) # what the lock's first field is compared with
    exchange_sources_hash
    ;;
  *)
    echo "usage: $0 build|build-filter|check|sources-hash" >&2
    exit 2
    ;;
esac
