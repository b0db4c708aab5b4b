#!/usr/bin/env bash
# Filter benchmark (DESIGN.md "Performance budget"): real Envoy pinned to core 0 with
# --concurrency 1, wrk pinned to core 1, GET with a ~364-byte ES256 JWT to a
# direct_response route, 32 connections, RUNS x DURATION per configuration, medians.
# Configurations are interleaved within each run so drift hits them all alike; only the
# ratios within this one run mean anything.
#   a) router only  b) no-op proxy-wasm filter  c) jwt_authn (no cache)
#   c2) jwt_authn + jwt_cache_config  d) meshpass, cache hit  e) ext_authz (HTTP)
#   d2) with BASELINE_WASM=path (another build, e.g. main before a change): its cache hit
#      and its ES256 validation (f), in the same Envoy and run, to compare a change's cost
#   f) meshpass validate_only_for_benchmarks with the ES256 token, g) the same with an
#      RS256 (RSA-2048) token: the miss path's core validation in V8 on every request
# Usage: filter/bench/run.sh   (env: RUNS=3 DURATION=10s CONNECTIONS=32; CONFIGS="router
#   noop_wasm ..." runs a subset, router and noop_wasm always needed for the ratios)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
RUNS=${RUNS:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
ENVOY=${MESHPASS_ENVOY_BIN:-$ROOT/.tools/bin/envoy}
WASM=${MESHPASS_FILTER_WASM:-$ROOT/target/wasm32-wasip1/wasm-release/meshpass_filter.wasm}
[ -x "$ENVOY" ] || { echo "Envoy not found at $ENVOY (make setup)"; exit 1; }
if [ ! -f "$WASM" ]; then
  cargo build -q -p meshpass-filter --target wasm32-wasip1 --profile wasm-release
  WASM=${CARGO_TARGET_DIR:-$ROOT/target}/wasm32-wasip1/wasm-release/meshpass_filter.wasm
fi
if ! command -v wrk >/dev/null; then
  echo "[bench] installing wrk"
  (apt-get install -y wrk >/dev/null 2>&1) || (apt-get update >/dev/null && apt-get install -y wrk >/dev/null)
fi
WORK=$(mktemp -d)
ENVOY_PID=
UP_PID=
# Envoy is started by meshpass-testkit (reserved ports, every listener checked to be
# bound by this Envoy); it stops Envoy when fd 3 (its stdin) closes, also if we die.
cleanup() { exec 3>&- 2>/dev/null; [ -n "$UP_PID" ] && wait "$UP_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
cargo build -q -p meshpass-testkit --bin meshpass-testkit
TESTKIT=${CARGO_TARGET_DIR:-$ROOT/target}/debug/meshpass-testkit

cargo run -q -p meshpass-filter --example mint_bench_token > "$WORK/token.json"
TOKEN=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["token"])' "$WORK/token.json")
RS256_TOKEN=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["rs256_token"])' "$WORK/token.json")
echo "[bench] token: ${#TOKEN} bytes (ES256), ${#RS256_TOKEN} bytes (RS256); wasm: $(stat -c %s "$WASM") bytes"

declare -A PORT
BASELINE_WASM=${BASELINE_WASM:-}
declare -A TOKEN_FOR
for c in router noop_wasm jwt_authn jwt_authn_cache meshpass_hit meshpass_hit_revoked meshpass_hit_baseline ext_authz validate_es256 validate_es256_baseline; do TOKEN_FOR[$c]=$TOKEN; done
TOKEN_FOR[validate_rs256]=$RS256_TOKEN

# Ports are `@port:NAME` placeholders that meshpass-testkit replaces with reserved ports.
python3 - "$WORK" "$WASM" "$WORK/token.json" "$BASELINE_WASM" <<'PY'
import json, sys
work, wasm, tokfile, baseline_wasm = sys.argv[1:5]
router, noop, jwt, jwtc, mesh, extauthz, exchange, authz, val_es, val_rs, mesh_base, mesh_rv, feed, val_es_base = (
    "@port:" + n for n in ("router", "noop_wasm", "jwt_authn", "jwt_authn_cache", "meshpass_hit", "ext_authz",
                           "exchange", "authz", "validate_es256", "validate_rs256", "meshpass_hit_baseline",
                           "meshpass_hit_revoked", "feed", "validate_es256_baseline"))
tok = json.load(open(tokfile))
router_f = {"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
def listener(name, port, filters, body="ok", headers=None):
    route = {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": body}}}
    if headers:
        route["response_headers_to_add"] = [{"header": {"key": k, "value": v}} for k, v in headers]
    route_config = {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [route]}]}
    if len(body) > 4096:  # Envoy's default cap on a direct response
        route_config["max_direct_response_body_size_bytes"] = 1 << 20
    return {"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": name,
                "route_config": route_config,
                "http_filters": filters + [router_f]}}]}]}
def wasm_filter(vm, conf, code=wasm):
    return {"name": "envoy.filters.http.wasm", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
        "config": {"name": vm, "root_id": "meshpass", "vm_config": {"vm_id": vm, "runtime": "envoy.wasm.runtime.v8",
                   "code": {"local": {"filename": code}}},
                   "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": json.dumps(conf)}}}}
def jwt_filter(cache):
    p = {"issuer": "https://issuer.bench", "audiences": ["meshpass"], "local_jwks": {"inline_string": tok["jwks"]}, "forward": True}
    if cache:
        p["jwt_cache_config"] = {"jwt_cache_size": 1000}
    return {"name": "envoy.filters.http.jwt_authn", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": {"p": p}, "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "p"}}]}}
def cluster(name, port):
    return {"name": name, "type": "STATIC", "connect_timeout": "1s", "load_assignment": {"cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}}
meshpass = {
    "mode": "CLIENT", "own_identity": {"spiffe_id": tok["sub"]},
    "issuers": [{"issuer": "https://issuer.bench", "audiences": ["meshpass"], "trust_domains": ["cluster.local"], "jwks": tok["jwks"]}],
    "exchange": {"cluster": "exchange", "authority": "exchange.bench"},
    "default_rule": {"resource": "https://app.bench", "scopes": ["read"]},
    # The plain cache hit, as before revocation existed.
    "revocation": {"enabled": False},
}
# meshpass_hit_revoked: the same, enforcing a 1,000-entry revocation set (900 exact
# subjects, 50 patterns, 50 jtis; none matches the bench token) from the feed listener.
meshpass_rv = dict(meshpass, revocation={"cluster": "feed", "poll_interval_ms": 5000})
def rv(i, target, m):
    return {"id": f"rv-{i}", "target": target, "match": m, "reason": "bench", "until": None}
rv_set = ([rv(i, "subject", f"spiffe://cluster.local/ns/bench/sa/revoked-{i}") for i in range(900)]
          + [rv(900 + i, "subject", f"spiffe://cluster.local/ns/revoked-{i}/*") for i in range(50)]
          + [rv(950 + i, "jti", f"jti-{i}") for i in range(50)])
feed_body = json.dumps({"version": 1, "full": True, "added": rv_set, "removed": []})
# The miss path's validation alone (benchmark aid: refused next to any exchange setting).
validate_only = {
    "validate_only_for_benchmarks": True,
    "mode": "CLIENT", "own_identity": {"spiffe_id": tok["sub"]},
    "issuers": meshpass["issuers"],
}
answer = json.dumps({"access_token": "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJiZW5jaCJ9.c2ln", "issued_token_type": "urn:ietf:params:oauth:token-type:jwt",
                     "token_type": "Bearer", "expires_in": 86000, "scope": "read"})
ext = {"name": "envoy.filters.http.ext_authz", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
    "http_service": {"server_uri": {"uri": f"http://127.0.0.1:{authz}", "cluster": "authz", "timeout": "1s"},
                     "authorization_response": {"allowed_upstream_headers": {"patterns": [{"exact": "authorization"}]}}}}}
cfg = {"static_resources": {
    "listeners": [
        listener("router", router, []),
        listener("noop_wasm", noop, [wasm_filter("noop", {"noop_for_benchmarks": True})]),
        listener("jwt_authn", jwt, [jwt_filter(False)]),
        listener("jwt_authn_cache", jwtc, [jwt_filter(True)]),
        listener("meshpass_hit", mesh, [wasm_filter("meshpass", meshpass)]),
        listener("meshpass_hit_revoked", mesh_rv, [wasm_filter("meshpass_rv", meshpass_rv)]),
        listener("feed", feed, [], body=feed_body),
        listener("ext_authz", extauthz, [ext]),
        listener("validate_es256", val_es, [wasm_filter("validate", validate_only)]),
        listener("validate_rs256", val_rs, [wasm_filter("validate", validate_only)]),
        listener("exchange", exchange, [], body=answer),
        listener("authz", authz, [], headers=[("authorization", "Bearer participant")]),
    ],
    "clusters": [cluster("exchange", exchange), cluster("authz", authz), cluster("feed", feed)]}}
if baseline_wasm:
    cfg["static_resources"]["listeners"].append(
        # Baselines are builds from before revocation existed: no `revocation` key.
        listener("meshpass_hit_baseline", mesh_base, [wasm_filter("meshpass_baseline",
                 {k: v for k, v in meshpass.items() if k != "revocation"}, baseline_wasm)]))
    cfg["static_resources"]["listeners"].append(
        listener("validate_es256_baseline", val_es_base, [wasm_filter("validate_baseline", validate_only, baseline_wasm)]))
json.dump(cfg, open(f"{work}/envoy.json", "w"))
PY

mkfifo "$WORK/ctl"
MESHPASS_ENVOY_BIN=$ENVOY "$TESTKIT" envoy --config "$WORK/envoy.json" --concurrency 1 --cpus 0 \
  --out "$WORK/ports" --log "$WORK/envoy.log" < "$WORK/ctl" > "$WORK/testkit.log" 2>&1 &
UP_PID=$!
exec 3>"$WORK/ctl"
until grep -qx ready "$WORK/ports" 2>/dev/null; do
  kill -0 "$UP_PID" 2>/dev/null || { echo "[bench] Envoy did not start"; cat "$WORK/testkit.log"; exit 1; }
  sleep 0.1
done
while read -r name value; do
  case $name in pid) ENVOY_PID=$value ;; admin) ADMIN=$value ;; ready) ;; *) PORT[$name]=$value ;; esac
done < "$WORK/ports"
DEFAULT_CONFIGS="router noop_wasm jwt_authn jwt_authn_cache meshpass_hit meshpass_hit_revoked ext_authz validate_es256 validate_rs256"
[ -n "$BASELINE_WASM" ] && DEFAULT_CONFIGS="$DEFAULT_CONFIGS meshpass_hit_baseline validate_es256_baseline"
CONFIGS=${CONFIGS:-$DEFAULT_CONFIGS}
for c in $CONFIGS; do # warm up (meshpass: the one miss that fills the cache)
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer ${TOKEN_FOR[$c]}" "http://127.0.0.1:${PORT[$c]}/")
  [ "$code" = 200 ] || { echo "[bench] $c answered $code"; cat "$WORK/envoy.log"; exit 1; }
done
if [[ " $CONFIGS " == *" meshpass_hit_revoked "* ]]; then
  # The revocation set is polled on the filter's first tick: measure once it is loaded.
  for _ in $(seq 50); do
    v=$(curl -s "http://127.0.0.1:$ADMIN/stats?filter=meshpass_revocation_version" | awk -F': ' '{print $2}' | sort -n | tail -1)
    [ "${v:-0}" -ge 1 ] && break
    sleep 0.2
  done
  [ "${v:-0}" -ge 1 ] || { echo "[bench] the revocation set was not loaded"; cat "$WORK/envoy.log"; exit 1; }
  echo "[bench] meshpass_hit_revoked enforces 1,000 revocations (feed version $v)"
fi
ENVOY_CPU_TICKS() { awk '{print $14+$15}' "/proc/$ENVOY_PID/stat"; }
: > "$WORK/results"
echo "[bench] load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for run in $(seq 1 "$RUNS"); do
  for c in $CONFIGS; do
    t0=$(ENVOY_CPU_TICKS)
    out=$(taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency -H "Authorization: Bearer ${TOKEN_FOR[$c]}" "http://127.0.0.1:${PORT[$c]}/")
    t1=$(ENVOY_CPU_TICKS)
    rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1=="50%" {print $2}' <<<"$out")
    p99=$(awk '$1=="99%" {print $2}' <<<"$out")
    total=$(awk '/requests in/ {print $1}' <<<"$out")
    non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out"); non2xx=${non2xx:-0}
    echo "$run $c $rps $p50 $p99 $total $non2xx $((t1 - t0))" >> "$WORK/results"
    printf '[bench] run %s %-16s %10s rps  p50 %-8s p99 %-8s non-2xx %s\n' "$run" "$c" "$rps" "$p50" "$p99" "$non2xx"
  done
done
echo "[bench] load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$WORK/results" "$(getconf CLK_TCK)" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
hz = int(sys.argv[2])
def ms(v):
    for suf, f in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if v.endswith(suf):
            return float(v[:-len(suf)]) * f
    return float(v)
order = []
for r in rows:
    if r[1] not in order:
        order.append(r[1])
med = {}
for c in order:
    rs = [r for r in rows if r[1] == c]
    med[c] = dict(rps=statistics.median(float(r[2]) for r in rs),
                  p50=statistics.median(ms(r[3]) for r in rs),
                  p99=statistics.median(ms(r[4]) for r in rs),
                  cpu_us=statistics.median(int(r[7]) / hz * 1e6 / max(int(r[5]), 1) for r in rs),
                  bad=sum(int(r[6]) for r in rs))
base, noop = med["router"], med["noop_wasm"]
print("\n| configuration | rps (median) | p50 ms | p99 ms | / router | / no-op wasm | Envoy CPU µs/req | over router | non-2xx |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for c in order:
    m = med[c]
    print(f"| {c} | {m['rps']:.0f} | {m['p50']:.2f} | {m['p99']:.2f} | {m['rps']/base['rps']:.2f} | {m['rps']/noop['rps']:.2f} | {m['cpu_us']:.1f} | {m['cpu_us']-base['cpu_us']:+.1f} | {m['bad']} |")
for c in ("validate_es256", "validate_es256_baseline", "validate_rs256"):
    if c in med:
        m = med[c]
        print(f"{c}: core validate in wasm (V8) = {m['cpu_us'] - noop['cpu_us']:+.1f} µs Envoy CPU per request over the no-op wasm filter"
              f" ({m['rps']:.0f} rps = {m['rps'] / noop['rps']:.3f} x no-op wasm)")
if "meshpass_hit_baseline" in med:
    b = med["meshpass_hit_baseline"]
    print(f"baseline build cache hit / no-op wasm (rps) = {b['rps'] / noop['rps']:.3f};"
          f" this build / baseline build (rps) = {med['meshpass_hit']['rps'] / b['rps']:.3f},"
          f" Envoy CPU per request {med['meshpass_hit']['cpu_us'] - b['cpu_us']:+.2f} µs")
if "meshpass_hit_revoked" in med and "meshpass_hit" in med:
    r, h = med["meshpass_hit_revoked"], med["meshpass_hit"]
    print(f"cache hit with 1,000 revocations / plain cache hit: rps {r['rps'] / h['rps']:.3f},"
          f" Envoy CPU per request {r['cpu_us'] - h['cpu_us']:+.2f} µs ({h['cpu_us'] / r['cpu_us']:.3f} by CPU; goal >= 0.97)")
if "meshpass_hit" in med:
    ratio = med["meshpass_hit"]["rps"] / noop["rps"]
    verdict = "MEETS" if ratio >= 0.90 else "MISSES"
    print(f"\nmeshpass cache hit / no-op wasm (rps) = {ratio:.3f}: {verdict} the DESIGN.md budget (>= 0.90)")
    cpu_ratio = noop["cpu_us"] / med["meshpass_hit"]["cpu_us"]
    print(f"meshpass cache hit / no-op wasm (1 / Envoy CPU per request) = {cpu_ratio:.3f}"
          " (robust when other processes compete for the cores: check the load average)")
PY
