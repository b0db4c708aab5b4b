#!/usr/bin/env bash
# Smoke test of the kind kit: frontend calls echo with its projected service-account token
# (audience "meshpass"); echo's sidecar (meshpass SERVER, bound to frontend's Istio mTLS
# identity) exchanges it; echo must see a participant token, never the SA token.
# NOT CI-tested.
set -euo pipefail
fail() { echo "FAIL: $*" >&2; exit 1; }
exec_frontend() { kubectl -n demo exec deploy/frontend -c curl -- "$@"; }

SA_TOKEN=$(exec_frontend cat /var/run/secrets/meshpass/token)
body=$(exec_frontend curl -s -H "Authorization: Bearer $SA_TOKEN" http://echo.demo.svc.cluster.local:8080/orders)
auth=$(printf '%s' "$body" | sed -n 's/.*"authorization":"Bearer \([^"]*\)".*/\1/p')
[ -n "$auth" ] || fail "echo saw no bearer token: $body"
[ "$auth" != "$SA_TOKEN" ] || fail "echo saw the service-account token itself"
payload=$(printf '%s' "$auth" | cut -d. -f2 | tr '_-' '/+')
while [ $(( ${#payload} % 4 )) -ne 0 ]; do payload="$payload="; done
claims=$(printf '%s' "$payload" | base64 -d 2>/dev/null || true)
printf '%s' "$claims" | grep -q '"sub":"spiffe://cluster.local/ns/demo/sa/frontend"' \
  || fail "participant token sub is not frontend's SPIFFE ID: $claims"
echo "ok: echo received a participant token: $claims"

code=$(exec_frontend curl -s -o /dev/null -w '%{http_code}' http://echo.demo.svc.cluster.local:8080/orders)
[ "$code" = 401 ] || fail "a request without token got $code, want 401"
echo "ok: a request without token is refused (401)"
