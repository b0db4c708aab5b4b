#!/usr/bin/env python3
"""The warm cache hit's own code in V8, the engine Envoy runs the filter in, without Envoy.

Builds filter/examples/hit_loop.rs for wasm32-wasip1 (crate bench/v8-hit, the filter's
wasm-release profile, function names kept) and runs it in Node.js's V8 with
`--no-liftoff`, as Envoy's V8 is configured (TurboFan only). Each repetition times a run
with 0 warm hits and one with N, interleaved; (t_N - t_0) / N is one hit: the module's
decision code plus hit_loop's stub host (one header-map buffer allocated and freed in the
module per hit, as the proxy-wasm host's; no host call costs, which the ABI floor row of
`make bench` measures in Envoy).

    scripts/v8-hit.py [--n 5000000] [--reps 7] [--mode CLIENT|SERVER]
                      [--against OTHER.wasm] [--perf FILE] [--wasm THIS.wasm]

`--against` interleaves a second build (e.g. one built from another revision with
`git worktree`) and prints the paired ratio; `--perf` records one N-hit run under
`perf record` with V8's perf map and prints the JIT'd functions by share.
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_JS = os.path.join(ROOT, "bench/v8-hit/run.js")
# node's working directory (removed at exit).
WORK = tempfile.mkdtemp(prefix="v8-hit-")
# Two-sided 95 % t quantiles, for the interval of a mean of k values (k - 1 dof).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
       9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179, 14: 2.145, 19: 2.093, 29: 2.045}


def t95(dof):
    return T95.get(dof) or T95[max(k for k in T95 if k <= dof)]


def build():
    env = dict(os.environ, CARGO_PROFILE_WASM_RELEASE_STRIP="none")
    subprocess.run(["cargo", "build", "-q", "-p", "meshpass-v8-hit", "--target",
                    "wasm32-wasip1", "--profile", "wasm-release"], cwd=ROOT, env=env, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    return os.path.join(target, "wasm32-wasip1/wasm-release/hit_loop.wasm")


def wall_ns(node, wasm, n, mode, prefix=(), flags=()):
    # Every function compiled by TurboFan when the module is instantiated, before the
    # clock starts: no compile time in either run.
    r = subprocess.run(list(prefix) + [node, "--no-warnings", "--no-liftoff",
                                       "--no-wasm-lazy-compilation", *flags, RUN_JS,
                                       wasm, str(n), mode],
                       # --perf-basic-prof also leaves V8 logs in the working directory.
                       capture_output=True, text=True, cwd=WORK)
    m = re.search(r"WALL_NS (\d+)", r.stderr)
    if r.returncode != 0 or not m or f"{n + 1} hits" not in r.stdout:
        sys.exit(f"hit_loop in V8 failed (exit {r.returncode}): {r.stdout}{r.stderr}")
    return int(m.group(1))


def mean_ci(xs):
    m = statistics.mean(xs)
    if len(xs) < 2:
        return m, float("nan")
    return m, t95(len(xs) - 1) * statistics.stdev(xs) / len(xs) ** 0.5


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5_000_000)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--mode", default="CLIENT", choices=["CLIENT", "SERVER"])
    ap.add_argument("--wasm", help="a hit_loop.wasm already built (default: build this tree's)")
    ap.add_argument("--against", metavar="OTHER.wasm")
    ap.add_argument("--perf", metavar="FILE")
    a = ap.parse_args()
    node = shutil.which("node")
    if not node:
        sys.exit("node (Node.js >= 20, for its V8 and node:wasi) is not on PATH")
    wasm = os.path.abspath(a.wasm) if a.wasm else build()
    builds = [("this", wasm)] + ([("against", os.path.abspath(a.against))] if a.against else [])
    if a.perf:
        a.perf = os.path.abspath(a.perf)
    per_hit = {name: [] for name, _ in builds}
    for rep in range(a.reps):
        for name, w in builds:
            t0 = wall_ns(node, w, 0, a.mode)
            tn = wall_ns(node, w, a.n, a.mode)
            ns = (tn - t0) / a.n
            per_hit[name].append(ns)
            print(f"rep {rep + 1} {name}: {ns:.1f} ns per hit", flush=True)
    for name, xs in per_hit.items():
        m, ci = mean_ci(xs)
        print(f"{name}: {m:.1f} ± {ci:.1f} ns per hit in V8 ({a.mode}, {a.reps} reps, "
              f"median {statistics.median(xs):.1f})")
    if a.against:
        ratios = [x / y for x, y in zip(per_hit["this"], per_hit["against"])]
        m, ci = mean_ci(ratios)
        print(f"this / against: {m:.3f} ± {ci:.3f} (paired per repetition)")
    if a.perf:
        # --perf-basic-prof: V8 writes /tmp/perf-PID.map, naming each JIT'd wasm function
        # after the module's name section (kept by the build above).
        wall_ns(node, wasm, a.n, a.mode, flags=["--perf-basic-prof"],
                prefix=["perf", "record", "-q", "-F", "2999", "-e", "cpu-clock", "-o", a.perf,
                        "--"])
        rep = subprocess.run(["perf", "report", "-i", a.perf, "--no-children", "--sort",
                              "dso,symbol", "--stdio"], capture_output=True, text=True,
                             check=True).stdout
        print(f"perf record of {a.n} hits ({a.perf}), by share of all samples (V8's own "
              "compiler threads included):")
        shown = 0
        for line in rep.splitlines():
            m = re.match(r"\s*([\d.]+)%\s+(\S.*?)\s+\[\.\]\s+(.*)", line)
            if not m or shown >= 25:
                continue
            shown += 1
            sym = re.split(r"\s{2,}", m.group(3).strip())[0]
            print(f"  {m.group(1):>6} %  {readable(sym)}  ({m.group(2).strip()})")


def readable(sym):
    """A JIT'd wasm function's perf-map name (`JS:<mangled>-<index>-turbofan`) made legible."""
    sym = re.sub(r"^JS:", "", sym)
    sym = re.sub(r"-\d+-turbofan$", "", sym)
    m = re.match(r"_ZN(.*)17h[0-9a-f]{16}E$", sym)
    if not m:
        return sym
    parts, rest = [], m.group(1)
    while rest and rest[0].isdigit():
        k = re.match(r"\d+", rest).group(0)
        parts.append(rest[len(k):len(k) + int(k)])
        rest = rest[len(k) + int(k):]
    out = "::".join(parts)
    for a, b in (("$LT$", "<"), ("$GT$", ">"), ("$u20$", " "), ("$C$", ","), ("$RF$", "&"),
                 ("..", "::"), ("_$", "$")):
        out = out.replace(a, b)
    return out

if __name__ == "__main__":
    try:
        main()
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
