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

log "applying ../../istio through overlay/ (dev OpenBao, in-cluster wasm URL, kit image)"
kubectl apply -k "$HERE/overlay"
kubectl -n meshpass set image deploy/meshpass-exchange "exchange=$IMAGE"
kubectl -n meshpass rollout status deploy/meshpass-exchange --timeout=180s
kubectl -n demo rollout status deploy/echo --timeout=180s
kubectl -n demo rollout status deploy/frontend --timeout=180s
log "up; run ./smoke.sh"
