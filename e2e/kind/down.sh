#!/usr/bin/env bash
# Deletes the kit's kind cluster and its local registry container.
set -euo pipefail
kind delete cluster --name "${CLUSTER:-meshpass}"
docker rm -f "${REGISTRY_NAME:-kind-registry}" >/dev/null 2>&1 || true
echo "[kind] down"
