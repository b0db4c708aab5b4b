#!/usr/bin/env python3
"""Writes meshpass's OCI images as OCI image layouts (and an archive of each), without
Docker and with nothing but the Python standard library.

    oci_image.py wasm     --wasm FILE --out DIR --tag TAG
    oci_image.py exchange --binary FILE --ca-bundle FILE --out DIR --tag TAG

* `wasm`: the *oci* variant of the Wasm image spec that istio-agent pulls for WasmPlugin
  and ECDS: config media type `application/vnd.module.wasm.config.v1+json`, one layer
  `application/vnd.module.wasm.content.layer.v1+wasm` holding the module bytes as they
  are, and the same config JSON as a second layer of media type
  `application/vnd.module.wasm.config.v1+json`: Istio's fetcher
  (pkg/wasm/imagefetcher.go, extractOCIArtifactImage) requires exactly two layers, one of
  them the module.
* `exchange`: a minimal Linux image: the static binary at /usr/local/bin, a CA bundle at
  /etc/ssl/certs/ca-certificates.crt, /etc/passwd and /etc/group naming the non-root
  user 65532 (no shell exists in the image), /tmp and /var/lib/meshpass writable by it.

Both are byte-for-byte reproducible: the same inputs give the same digests (fixed
timestamps, sorted entries, gzip without a name or time). DIR gets `oci-layout`,
`index.json` (the manifest tagged TAG) and `blobs/sha256/`; DIR.tar is the same layout
as one archive (`skopeo copy oci-archive:DIR.tar docker://...`). The manifest digest is
printed on stdout and written to DIR.digest: it is what WasmPlugin `url`/`sha256` and
the Deployment `image` pin.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile

# Every timestamp in the images (1 January 2026): reproducible, and not the epoch, which
# some registries and tools show as "56 years ago".
# Fixed, never the caller's SOURCE_DATE_EPOCH: another date is another digest.
EPOCH = 1767225600
CREATED = "2026-01-01T00:00:00Z"

WASM_CONFIG = "application/vnd.module.wasm.config.v1+json"
WASM_LAYER = "application/vnd.module.wasm.content.layer.v1+wasm"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"

UID = 65532
SOURCE = "https://example.invalid/meshpass"


def created():
    return CREATED


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


class Layout:
    """An OCI image layout directory being written."""

    def __init__(self, out):
        self.out = out
        if os.path.exists(out):
            shutil.rmtree(out)
        os.makedirs(os.path.join(out, "blobs", "sha256"))

    def blob(self, data, media_type):
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(self.out, "blobs", "sha256", digest), "wb") as f:
            f.write(data)
        return {"mediaType": media_type, "digest": "sha256:" + digest, "size": len(data)}

    def finish(self, config, layers, tag, annotations):
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config,
            "layers": layers,
            "annotations": annotations,
        }
        desc = self.blob(canonical(manifest), OCI_MANIFEST)
        desc["annotations"] = {"org.opencontainers.image.ref.name": tag}
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [desc]}
        with open(os.path.join(self.out, "index.json"), "wb") as f:
            f.write(canonical(index))
        with open(os.path.join(self.out, "oci-layout"), "wb") as f:
            f.write(canonical({"imageLayoutVersion": "1.0.0"}))
        write_archive(self.out)
        with open(self.out + ".digest", "w") as f:
            f.write(desc["digest"] + "\n")
        return desc["digest"]


def tar_info(name, *, mode, size=0, kind=tarfile.REGTYPE, uid=0):
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = mode
    ti.size = size
    ti.mtime = EPOCH
    ti.uid = ti.gid = uid
    ti.uname = ti.gname = ""
    return ti


def write_archive(layout):
    """DIR.tar: the layout's files, sorted, fixed metadata (an `oci-archive:`)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        paths = []
        for root, dirs, files in os.walk(layout):
            dirs.sort()
            rel = os.path.relpath(root, layout)
            if rel != ".":
                paths.append((rel, None))
            for name in sorted(files):
                paths.append((os.path.normpath(os.path.join(rel, name)), os.path.join(root, name)))
        for rel, path in sorted(paths):
            if path is None:
                tar.addfile(tar_info(rel + "/", mode=0o755, kind=tarfile.DIRTYPE))
            else:
                with open(path, "rb") as f:
                    data = f.read()
                tar.addfile(tar_info(rel, mode=0o644, size=len(data)), io.BytesIO(data))
    with open(layout + ".tar", "wb") as f:
        f.write(buf.getvalue())


def build_wasm(args):
    with open(args.wasm, "rb") as f:
        module = f.read()
    if module[:4] != b"\0asm":
        sys.exit(f"{args.wasm}: not a WebAssembly module")
    layout = Layout(args.out)
    # The config the Wasm image spec describes; istio-agent reads only the media types.
    config_json = canonical({"created": created(), "type": "envoy_proxy_wasm_http_filter", "rootIds": ["meshpass"]})
    config = layout.blob(config_json, WASM_CONFIG)
    layer = layout.blob(module, WASM_LAYER)
    layer["annotations"] = {"org.opencontainers.image.title": "plugin.wasm"}
    config_layer = layout.blob(config_json, WASM_CONFIG)
    config_layer["annotations"] = {"org.opencontainers.image.title": "runtime-config.json"}
    return layout.finish(config, [layer, config_layer], args.tag, annotations(args, "meshpass proxy-wasm filter"))


def annotations(args, title):
    return {
        "org.opencontainers.image.title": title,
        "org.opencontainers.image.version": args.tag,
        "org.opencontainers.image.source": SOURCE,
        "org.opencontainers.image.licenses": "Apache-2.0",
        "org.opencontainers.image.created": created(),
    }


def rootfs_tar(binary, ca_bundle):
    """The exchange image's single layer (uncompressed tar bytes)."""
    with open(binary, "rb") as f:
        exe = f.read()
    if exe[:4] != b"\x7fELF":
        sys.exit(f"{binary}: not an ELF executable")
    with open(ca_bundle, "rb") as f:
        cas = f.read()
    if b"BEGIN CERTIFICATE" not in cas:
        sys.exit(f"{ca_bundle}: no PEM certificate in it")
    passwd = f"root:x:0:0:root:/nonexistent:/sbin/nologin\nnonroot:x:{UID}:{UID}:nonroot:/nonexistent:/sbin/nologin\n"
    group = f"root:x:0:\nnonroot:x:{UID}:\n"
    entries = [
        ("etc/", 0o755, None, 0),
        ("etc/group", 0o644, group.encode(), 0),
        ("etc/meshpass/", 0o755, None, 0),
        ("etc/passwd", 0o644, passwd.encode(), 0),
        ("etc/ssl/", 0o755, None, 0),
        ("etc/ssl/certs/", 0o755, None, 0),
        ("etc/ssl/certs/ca-certificates.crt", 0o644, cas, 0),
        ("tmp/", 0o1777, None, 0),
        ("usr/", 0o755, None, 0),
        ("usr/local/", 0o755, None, 0),
        ("usr/local/bin/", 0o755, None, 0),
        ("usr/local/bin/meshpass-exchange", 0o755, exe, 0),
        ("var/", 0o755, None, 0),
        ("var/lib/", 0o755, None, 0),
        ("var/lib/meshpass/", 0o700, None, UID),
    ]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, mode, data, uid in entries:
            if data is None:
                tar.addfile(tar_info(name, mode=mode, kind=tarfile.DIRTYPE, uid=uid))
            else:
                tar.addfile(tar_info(name, mode=mode, size=len(data), uid=uid), io.BytesIO(data))
    return buf.getvalue()


def build_exchange(args):
    raw = rootfs_tar(args.binary, args.ca_bundle)
    gz = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=gz, mtime=0, compresslevel=9) as f:
        f.write(raw)
    layout = Layout(args.out)
    layer = layout.blob(gz.getvalue(), OCI_LAYER_GZIP)
    config = {
        "created": created(),
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": f"{UID}:{UID}",
            "Entrypoint": ["/usr/local/bin/meshpass-exchange"],
            "Cmd": ["serve", "--config", "/etc/meshpass/exchange.toml"],
            "Env": ["SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"],
            "WorkingDir": "/var/lib/meshpass",
            "ExposedPorts": {"8080/tcp": {}},
            "Labels": {"org.opencontainers.image.source": SOURCE},
        },
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]},
        "history": [{"created": created(), "created_by": "scripts/oci_image.py exchange"}],
    }
    cfg = layout.blob(canonical(config), OCI_CONFIG)
    return layout.finish(cfg, [layer], args.tag, annotations(args, "meshpass exchange service"))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="kind", required=True)
    w = sub.add_parser("wasm")
    w.add_argument("--wasm", required=True)
    e = sub.add_parser("exchange")
    e.add_argument("--binary", required=True)
    e.add_argument("--ca-bundle", required=True)
    for s in (w, e):
        s.add_argument("--out", required=True)
        s.add_argument("--tag", required=True)
    args = p.parse_args()
    digest = build_wasm(args) if args.kind == "wasm" else build_exchange(args)
    print(digest)


if __name__ == "__main__":
    main()
