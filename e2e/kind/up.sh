#!/usr/bin/env bash
# meshpass on kind + Istio: cluster, Istio, OpenBao (dev), the exchange service and the
# filter from ../../istio, two demo workloads. NOT CI-tested (needs Docker, kind,
# kubectl, istioctl). Idempotent enough to re-run after a failure.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CLUSTER=${CLUSTER:-meshpass}
IMAGE=${IMAGE:-meshpass-exchange:dev}
WASM=${MESHPASS_FILTER_WASM:-$ROOT/target/wasm32-wasip1/wasm-release/meshpass_filter.wasm}
log() { printf '[kind] %s\n' "$*"; }
need() { command -v "$1" >/dev/null || { echo "missing: $1 ($2)" >&2; exit 1; }; }
need docker "https://docs.docker.com/get-docker/"
need kind "https://kind.sigs.k8s.io/docs/user/quick-start/#installation"
need kubectl "https://kubernetes.io/docs/tasks/tools/"
need istioctl "https://istio.io/latest/docs/setup/getting-started/#download"

if ! kind get clusters | grep -qx "$CLUSTER"; then
  log "creating kind cluster $CLUSTER"
  kind create cluster --name "$CLUSTER" --config "$HERE/kind-config.yaml"
fi
kubectl config use-context "kind-$CLUSTER" >/dev/null

log "installing Istio (minimal profile)"
istioctl install -y --set profile=minimal --set meshConfig.trustDomain=cluster.local

log "building the filter and the exchange image"
(cd "$ROOT" && cargo build -p meshpass-filter --target wasm32-wasip1 --profile wasm-release)
docker build -t "$IMAGE" -f "$HERE/Dockerfile.exchange" "$ROOT"
kind load docker-image "$IMAGE" --name "$CLUSTER"

log "OpenBao dev server with transit"
kubectl apply -f "$HERE/manifests/openbao-dev.yaml"
kubectl -n openbao rollout status deploy/openbao --timeout=180s

log "serving the filter to WasmPlugin at http://meshpass-wasm.meshpass.svc.cluster.local/meshpass_filter.wasm"
kubectl create namespace meshpass --dry-run=client -o yaml | kubectl apply -f -
kubectl -n meshpass create configmap meshpass-wasm --from-file=meshpass_filter.wasm="$WASM" \
  --dry-run=client -o yaml | kubectl apply -f -
kubectl apply -f "$HERE/manifests/wasm-server.yaml"
kubectl -n meshpass rollout status deploy/meshpass-wasm --timeout=120s
log "filter sha256: $(sha256sum "$WASM" | cut -d' ' -f1) (WasmPlugin .spec.sha256)"

log "demo workloads"
kubectl apply -f "$HERE/manifests/demo-apps.yaml"

ISTIO_DIR="$ROOT/istio"
if ! ls "$ISTIO_DIR"/*.yaml >/dev/null 2>&1 && [ ! -f "$ISTIO_DIR/kustomization.yaml" ]; then
  echo "no manifests in $ISTIO_DIR: the exchange service Deployment, WasmPlugin and RequestAuthentication live there" >&2
  exit 1
fi
log "applying $ISTIO_DIR (exchange service, WasmPlugin, RequestAuthentication)"
if [ -f "$ISTIO_DIR/kustomization.yaml" ]; then
  kubectl apply -k "$ISTIO_DIR"
else
  kubectl apply -f "$ISTIO_DIR"
fi
# The kit's image and in-cluster Vault address replace the manifests' placeholders.
kubectl -n meshpass set image deploy/meshpass-exchange "*=$IMAGE" 2>/dev/null || true
kubectl -n meshpass set env deploy/meshpass-exchange VAULT_ADDR=http://openbao.openbao.svc:8200 VAULT_TOKEN=root 2>/dev/null || true
kubectl -n meshpass rollout status deploy/meshpass-exchange --timeout=180s
kubectl -n demo rollout status deploy/echo --timeout=180s
kubectl -n demo rollout status deploy/frontend --timeout=180s
log "up; run ./smoke.sh"
