#!/usr/bin/env bash
# Checks istio/monitoring/prometheusrule.yaml with Prometheus' own tool: the rules parse
# (`promtool check rules`) and the alerts fire as alerts_test.yml says (`promtool test
# rules`). The PrometheusRule's spec is the rule file Prometheus Operator hands Prometheus.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v promtool >/dev/null || { echo "promtool missing: run make setup" >&2; exit 1; }
mkdir -p target/monitoring
python3 - istio/monitoring/prometheusrule.yaml target/monitoring/rules.yml <<'PY'
import json, sys
# Only the Kubernetes envelope is removed: everything under `spec:`, dedented by two.
src, dst = sys.argv[1:]
lines = open(src).read().splitlines()
start = lines.index("spec:")
body = [l[2:] if l.startswith("  ") else l for l in lines[start + 1:]]
open(dst, "w").write("\n".join(body) + "\n")
PY
promtool check rules target/monitoring/rules.yml
(cd istio/monitoring && promtool test rules alerts_test.yml)
