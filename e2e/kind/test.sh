#!/usr/bin/env bash
# The kit's test (make -C e2e/kind test), after up.sh:
#  1. frontend calls echo with its projected service-account token (audience "meshpass");
#     echo's sidecar (meshpass SERVER mode, bound to frontend's mTLS identity) exchanges
#     it: echo must see a participant token for frontend's SPIFFE ID, never the SA token;
#  2. a request without a token is refused (401);
#  3. thief replays frontend's token to echo: refused (the token names frontend, the mTLS
#     peer is thief);
#  4. thief presents frontend's token to the exchange service itself: refused (403 from
#     the AuthorizationPolicy: thief's sidecar is not a named caller);
#  5. the JWKS reached RequestAuthentication: echo's sidecar holds the exchange service's
#     key (kid meshpass-participant:v1) in its jwt_authn config, not Istio's fallback;
#  6. echo's filter polls the revocation feed: the AuthorizationPolicy lets its sidecar
#     GET /revocations (without it, revoked subjects keep their cached tokens).
# NOT CI-tested.
set -euo pipefail
fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }
in_pod() { local app=$1; shift; kubectl -n demo exec "deploy/$app" -c curl -- "$@"; }
ECHO=http://echo.demo.svc.cluster.local:8080
EXCHANGE=http://meshpass-exchange.meshpass.svc.cluster.local:8080

SA_TOKEN=$(in_pod frontend cat /var/run/secrets/meshpass/token)

body=$(in_pod frontend curl -s -H "Authorization: Bearer $SA_TOKEN" "$ECHO/orders")
# echo (mendhak/http-https-echo) answers pretty-printed JSON: `"authorization": "Bearer …"`.
auth=$(printf '%s' "$body" | sed -n 's/.*"authorization": *"Bearer \([^"]*\)".*/\1/p' | head -n 1)
[ -n "$auth" ] || fail "echo saw no bearer token: $body"
[ "$auth" != "$SA_TOKEN" ] || fail "echo saw the service-account token itself"
payload=$(printf '%s' "$auth" | cut -d. -f2 | tr '_-' '/+')
while [ $(( ${#payload} % 4 )) -ne 0 ]; do payload="$payload="; done
claims=$(printf '%s' "$payload" | base64 -d 2>/dev/null || true)
printf '%s' "$claims" | grep -q '"sub":"spiffe://cluster.local/ns/demo/sa/frontend"' \
  || fail "participant token sub is not frontend's SPIFFE ID: $claims"
printf '%s' "$claims" | grep -q '"iss":"https://meshpass-exchange.meshpass.svc.cluster.local"' \
  || fail "participant token is not from the exchange service: $claims"
ok "echo received a participant token: $claims"

code=$(in_pod frontend curl -s -o /dev/null -w '%{http_code}' "$ECHO/orders")
[ "$code" = 401 ] || fail "a request without token got $code, want 401"
ok "a request without token is refused (401)"

code=$(in_pod thief curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $SA_TOKEN" "$ECHO/orders")
case "$code" in 401|403) ;; *) fail "thief replaying frontend's token to echo got $code, want 401/403" ;; esac
ok "frontend's token replayed by thief is refused by echo's sidecar ($code)"

code=$(in_pod thief curl -s -o /dev/null -w '%{http_code}' -X POST \
  --data-urlencode grant_type=urn:ietf:params:oauth:grant-type:token-exchange \
  --data-urlencode "subject_token=$SA_TOKEN" \
  --data-urlencode subject_token_type=urn:ietf:params:oauth:token-type:jwt \
  --data-urlencode resource=echo "$EXCHANGE/token")
[ "$code" = 403 ] || fail "thief calling POST /token got $code, want 403 (AuthorizationPolicy)"
ok "thief cannot call the exchange service with frontend's token (403)"

jwks=$(kubectl -n demo exec deploy/echo -c istio-proxy -- pilot-agent request GET config_dump)
printf '%s' "$jwks" | grep -q 'meshpass-participant:v' \
  || fail "echo's jwt_authn has no meshpass key: istiod could not fetch the JWKS (see istio/README.md, JWKS reachability)"
ok "istiod fetched the exchange service's JWKS into echo's RequestAuthentication"

stat() {
  kubectl -n demo exec deploy/echo -c istio-proxy -- pilot-agent request GET stats \
    | sed -n "s/^wasmcustom\.$1: \([0-9]*\)\$/\1/p" | head -1
}
polled=0
for _ in $(seq 1 30); do
  polled=$(stat meshpass_revocation_poll_success); [ "${polled:-0}" -gt 0 ] && break; sleep 1
done
[ "${polled:-0}" -gt 0 ] || fail "echo's filter never polled GET /revocations successfully (failures: $(stat meshpass_revocation_poll_failure)): is it allowed in mesh-policy.yaml?"
ok "echo's filter polls the revocation feed ($polled successful polls)"
echo "PASS"
