#!/usr/bin/env bash
# Configures Vault/OpenBao for the exchange service (run once, with an admin token in
# VAULT_TOKEN/BAO_TOKEN and VAULT_ADDR/BAO_ADDR set; `vault` works as well as `bao`):
# transit with the signing key, the policy, and the Kubernetes auth role the service
# logs in with. Idempotent.
#   KUBERNETES_HOST  API server URL as OpenBao reaches it (default https://kubernetes.default.svc:443)
#   KUBERNETES_CA_CERT  PEM file of the API server's CA; needed when OpenBao does not run
#                       in the cluster (inside, it reads its pod's service-account CA)
#   TOKEN_REVIEWER_JWT_FILE  with KUBERNETES_CA_CERT (OpenBao outside the cluster): a
#                       token of a service account bound to system:auth-delegator, which
#                       OpenBao calls the TokenReview API with. Without it OpenBao sends
#                       the login token itself, whose audience (openbao) the API server
#                       refuses: every login of the exchange service would fail.
#   KEY_TYPE         transit key type (default ecdsa-p256)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BAO=${BAO:-bao}
KUBERNETES_HOST=${KUBERNETES_HOST:-https://kubernetes.default.svc:443}
KEY_TYPE=${KEY_TYPE:-ecdsa-p256}
if [ -n "${KUBERNETES_CA_CERT:-}" ] && [ -z "${TOKEN_REVIEWER_JWT_FILE:-}" ]; then
  echo "configure-openbao.sh: KUBERNETES_CA_CERT is set (OpenBao outside the cluster), so set" \
    "TOKEN_REVIEWER_JWT_FILE too: a token of a service account bound to system:auth-delegator" \
    "for OpenBao's TokenReview calls (the exchange service's login token is for audience" \
    "openbao, which the API server refuses). Nothing was changed." >&2
  exit 2
fi

# (Outputs are captured, not piped into `grep -q`: with pipefail an early grep exit
# would make the CLI fail with SIGPIPE.)
mounts=$("$BAO" secrets list -format=json)
case "$mounts" in *'"transit/"'*) ;; *) "$BAO" secrets enable transit ;; esac
"$BAO" read transit/keys/meshpass-participant >/dev/null 2>&1 \
  || "$BAO" write -f transit/keys/meshpass-participant type="$KEY_TYPE" >/dev/null
"$BAO" policy write meshpass-signer "$HERE/meshpass-signer.hcl"
auths=$("$BAO" auth list -format=json)
case "$auths" in *'"kubernetes/"'*) ;; *) "$BAO" auth enable kubernetes ;; esac
# Inside the cluster OpenBao reviews login tokens with its own service account (which
# needs system:auth-delegator) and trusts the API server with its pod's CA.
# Outside, it needs the API server's CA and a reviewer token of its own.
ca_arg=()
[ -z "${KUBERNETES_CA_CERT:-}" ] \
  || ca_arg=(kubernetes_ca_cert=@"$KUBERNETES_CA_CERT" token_reviewer_jwt=@"$TOKEN_REVIEWER_JWT_FILE")
# (The +-form: an empty array under set -u is an error on bash before 4.4, e.g. macOS.)
"$BAO" write auth/kubernetes/config kubernetes_host="$KUBERNETES_HOST" ${ca_arg[@]+"${ca_arg[@]}"}
"$BAO" write auth/kubernetes/role/meshpass-exchange @"$HERE/kubernetes-auth-role.json"
echo "configured: transit/keys/meshpass-participant ($KEY_TYPE), policy meshpass-signer, auth/kubernetes/role/meshpass-exchange"
