#!/usr/bin/env bash
# Configures Vault/OpenBao for the exchange service (run once, with an admin token in
# VAULT_TOKEN/BAO_TOKEN and VAULT_ADDR/BAO_ADDR set; `vault` works as well as `bao`):
# transit with the signing key, the policy, and the Kubernetes auth role the service
# logs in with. Idempotent.
#   KUBERNETES_HOST  API server URL as OpenBao reaches it (default https://kubernetes.default.svc:443)
#   KEY_TYPE         transit key type (default ecdsa-p256)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BAO=${BAO:-bao}
KUBERNETES_HOST=${KUBERNETES_HOST:-https://kubernetes.default.svc:443}
KEY_TYPE=${KEY_TYPE:-ecdsa-p256}

"$BAO" secrets list -format=json | grep -q '"transit/"' || "$BAO" secrets enable transit
"$BAO" read transit/keys/meshpass-participant >/dev/null 2>&1 \
  || "$BAO" write -f transit/keys/meshpass-participant type="$KEY_TYPE"
"$BAO" policy write meshpass-signer "$HERE/meshpass-signer.hcl"
"$BAO" auth list -format=json | grep -q '"kubernetes/"' || "$BAO" auth enable kubernetes
# Inside the cluster OpenBao reviews login tokens with its own service account (which
# needs system:auth-delegator) and trusts the API server with its pod's CA.
"$BAO" write auth/kubernetes/config kubernetes_host="$KUBERNETES_HOST"
"$BAO" write auth/kubernetes/role/meshpass-exchange @"$HERE/kubernetes-auth-role.json"
echo "configured: transit/keys/meshpass-participant ($KEY_TYPE), policy meshpass-signer, auth/kubernetes/role/meshpass-exchange"
