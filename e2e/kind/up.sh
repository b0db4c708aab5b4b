#!/usr/bin/env bash
# meshpass on kind + Istio: a local OCI registry, the cluster, Istio, OpenBao (dev, with
# transit and Kubernetes auth), PostgreSQL, the exchange service and the filter from
# ../../istio/base (through overlay/), three demo workloads. Images are built without
# Docker by `make images` and pushed with skopeo, pinned by digest; the filter is pulled
# by istio-agent from the registry as in production. NOT CI-tested (needs Docker, kind,
# kubectl, istioctl, skopeo and internet access). Safe to re-run after a failure.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CLUSTER=${CLUSTER:-meshpass}
REGISTRY_NAME=${REGISTRY_NAME:-kind-registry}
REGISTRY_PORT=${REGISTRY_PORT:-5001}
IMAGES=$ROOT/target/images
BAO=${BAO:-$ROOT/.tools/bin/bao}
log() { printf '[kind] %s\n' "$*"; }
need() { command -v "$1" >/dev/null || { echo "missing: $1 ($2)" >&2; exit 1; }; }
need docker "https://docs.docker.com/get-docker/"
need kind "https://kind.sigs.k8s.io/docs/user/quick-start/#installation"
need kubectl "https://kubernetes.io/docs/tasks/tools/"
need istioctl "https://istio.io/latest/docs/setup/getting-started/#download"
need skopeo "make setup installs it (Debian package skopeo)"

log "building the images (make images: filter + static exchange service, digests pinned)"
make -C "$ROOT" images
TAG=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)

log "local registry $REGISTRY_NAME on localhost:$REGISTRY_PORT"
if [ "$(docker inspect -f '{{.State.Running}}' "$REGISTRY_NAME" 2>/dev/null || true)" != true ]; then
  docker rm -f "$REGISTRY_NAME" >/dev/null 2>&1 || true
  docker run -d --restart=always -p "127.0.0.1:$REGISTRY_PORT:5000" --network bridge \
    --name "$REGISTRY_NAME" registry:2 >/dev/null
fi

if ! kind get clusters | grep -qx "$CLUSTER"; then
  log "creating kind cluster $CLUSTER"
  kind create cluster --name "$CLUSTER" --config "$HERE/kind-config.yaml"
fi
kubectl config use-context "kind-$CLUSTER" >/dev/null

log "wiring the registry into the cluster (containerd hosts.toml, kind network)"
for node in $(kind get nodes --name "$CLUSTER"); do
  docker exec "$node" mkdir -p "/etc/containerd/certs.d/localhost:$REGISTRY_PORT"
  printf '[host."http://%s:5000"]\n' "$REGISTRY_NAME" \
    | docker exec -i "$node" cp /dev/stdin "/etc/containerd/certs.d/localhost:$REGISTRY_PORT/hosts.toml"
done
if [ "$(docker inspect -f '{{json .NetworkSettings.Networks.kind}}' "$REGISTRY_NAME")" = null ]; then
  docker network connect kind "$REGISTRY_NAME"
fi
kubectl apply -f "$HERE/manifests/local-registry-hosting.yaml"

log "pushing both images by digest"
for image in meshpass-filter meshpass-exchange; do
  skopeo copy --quiet --preserve-digests --dest-tls-verify=false \
    "oci-archive:$IMAGES/$image.tar:$TAG" "docker://localhost:$REGISTRY_PORT/$image:$TAG"
  log "  localhost:$REGISTRY_PORT/$image@$(cat "$IMAGES/$image.digest")"
done

log "installing Istio (istio-operator.yaml: minimal profile, 1 min JWKS refresh)"
istioctl install -y -f "$HERE/istio-operator.yaml"

log "OpenBao dev server, configured with istio/vault/configure-openbao.sh"
kubectl apply -f "$HERE/manifests/openbao-dev.yaml"
kubectl -n openbao rollout status deploy/openbao --timeout=180s
kubectl -n openbao port-forward svc/openbao 18200:8200 >/dev/null 2>&1 &
PF=$!
trap 'kill "$PF" 2>/dev/null || true' EXIT
for _ in $(seq 1 30); do
  BAO_ADDR=http://127.0.0.1:18200 "$BAO" status >/dev/null 2>&1 && break
  sleep 1
done
BAO_ADDR=http://127.0.0.1:18200 BAO_TOKEN=root BAO="$BAO" bash "$ROOT/istio/vault/configure-openbao.sh"
kill "$PF" 2>/dev/null || true

log "PostgreSQL (password generated here, kept only in two Secrets)"
kubectl apply -f "$HERE/manifests/postgres.yaml"
kubectl create namespace meshpass --dry-run=client -o yaml | kubectl apply -f -
if ! kubectl -n postgres get secret postgres >/dev/null 2>&1; then
  PASSWORD=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
  kubectl -n postgres create secret generic postgres --from-literal=password="$PASSWORD"
  kubectl -n meshpass create secret generic meshpass-exchange-store \
    --from-literal=url="postgres://meshpass:$PASSWORD@postgres.postgres.svc.cluster.local:5432/meshpass"
fi
kubectl -n postgres rollout status deploy/postgres --timeout=180s

log "demo workloads (frontend, echo, thief)"
kubectl apply -f "$HERE/manifests/demo-apps.yaml"

log "meshpass: ../../istio/base through overlay/"
kubectl apply -k "$HERE/overlay"
kubectl -n meshpass rollout status deploy/meshpass-exchange --timeout=300s
for d in echo frontend thief; do
  kubectl -n demo rollout restart "deploy/$d" >/dev/null
  kubectl -n demo rollout status "deploy/$d" --timeout=300s
done
log "up; run: make -C e2e/kind test"
