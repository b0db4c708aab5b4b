#!/usr/bin/env python3
"""Instructions per exchange of the exchange service, under callgrind.

Starts an OpenBao dev server (transit, ecdsa-p256 key `bench`, as bench/src/stack.rs
does), the given service binary under `valgrind --tool=callgrind` with the benchmark's
configuration (token cache off, SQLite store, log level warn), warms it up, zeroes the
counters, then drives N never-seen ES256 subject tokens at it over C keep-alive
connections (each token used once, every answer must be 200) and dumps the counters.
Instruction counts do not depend on the machine's other load.

    scripts/callgrind-cold.py BIN [--n 3000] [--conc 32] [--out DIR]

`--warm` sends one form N times with the token cache on (the warm path: every answer
after the first is a cached token); `--bare` profiles the bench's bare axum handler
instead (BIN is then `meshpass-bench-servers`; no OpenBao, body `grant_type=x`), the
baseline the warm path is measured against.

Prints the instructions per exchange and the transit batch-size histogram the service
exported (meshpass_transit_batch_size, when the binary has it); leaves callgrind.out.*
in DIR for callgrind_annotate.
"""

import argparse
import base64
import http.client
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ISSUER = "https://issuer.bench"
AUDIENCE = "meshpass"
SUBJECT = "spiffe://cluster.local/ns/bench/sa/client"
KID = "bench-1"


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Issuer:
    def __init__(self):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.header = b64u(json.dumps({"alg": "ES256", "kid": KID, "typ": "JWT"},
                                      separators=(",", ":")).encode())
        self.now = int(time.time())

    def jwks(self):
        n = self.key.public_key().public_numbers()
        return json.dumps({"keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": KID,
            "x": b64u(n.x.to_bytes(32, "big")), "y": b64u(n.y.to_bytes(32, "big"))}]})

    def form(self, n):
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": SUBJECT, "iat": self.now,
                  "exp": self.now + 86400, "jti": "%024x" % n}
        inp = self.header + "." + b64u(json.dumps(claims, separators=(",", ":")).encode())
        r, s = decode_dss_signature(self.key.sign(inp.encode(), ec.ECDSA(hashes.SHA256())))
        tok = inp + "." + b64u(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
        return ("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange"
                "&subject_token=" + tok +
                "&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt"
                "&resource=payments")


def bao_api(addr, method, path, body=None):
    req = urllib.request.Request(addr + "/v1/" + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"X-Vault-Token": "root"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read()


def wait(pred, secs, what):
    end = time.time() + secs
    while time.time() < end:
        try:
            if pred():
                return
        except Exception:
            pass
        time.sleep(0.2)
    sys.exit("timed out waiting for " + what)


def drive(port, forms, conc):
    """POSTs every form once over `conc` keep-alive connections; all must answer 200."""
    q = queue.Queue()
    for f in forms:
        q.put(f)
    bad = []
    hdr = {"Content-Type": "application/x-www-form-urlencoded",
           "X-Forwarded-Client-Cert": "URI=" + SUBJECT}

    def worker():
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            try:
                f = q.get_nowait()
            except queue.Empty:
                return
            c.request("POST", "/token", body=f, headers=hdr)
            r = c.getresponse()
            body = r.read()
            if r.status != 200:
                bad.append((r.status, body[:200]))

    ts = [threading.Thread(target=worker) for _ in range(conc)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if bad:
        sys.exit(f"{len(bad)} exchanges failed, first: {bad[0]}")


def cpu_secs(pid):
    """utime + stime of a process, in seconds (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_ticks():
    """(busy, total) clock ticks of every CPU since boot (/proc/stat's first line)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]  # idle + iowait
    return sum(v) - idle, sum(v)


def metric_lines(port, name):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        text = r.read().decode()
    return [l for l in text.splitlines() if l.startswith(name)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bin")
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--conc", type=int, default=32)
    ap.add_argument("--out", default=".")
    ap.add_argument("--no-valgrind", action="store_true")
    ap.add_argument("--warm", action="store_true",
                    help="one form, N times, token cache on (the warm path)")
    ap.add_argument("--subject-cache", action="store_true",
                    help="64 tokens over and over, token cache off (the bench's cold row with "
                         "the verified-subject cache: every request mints, none verifies)")
    ap.add_argument("--bare", action="store_true",
                    help="BIN is meshpass-bench-servers: profile its bare POST /token")
    ap.add_argument("--wrk", type=float, default=0,
                    help="no valgrind: after the warm-up, SECS of wrk (bench/src/wrk.lua, one "
                         "thread) with never-seen tokens instead of the N exchanges; prints "
                         "wrk's figures and the batch sizes")
    ap.add_argument("--perf", metavar="FILE",
                    help="with --wrk: `perf record -e cpu-clock -g` the server meanwhile, "
                         "into FILE (real hardware: callgrind hides SHA-NI from sha2)")
    ap.add_argument("--perf-bao", metavar="FILE",
                    help="with --wrk: `perf record -e cpu-clock -g` OpenBao meanwhile, into FILE")
    ap.add_argument("--perf-call-graph", default="fp", metavar="MODE",
                    help="perf's --call-graph for --perf/--perf-bao: fp (default, -F 1999) or "
                         "dwarf (callers through frames without frame pointers; -F 499)")
    ap.add_argument("--vault", action="append", default=[], metavar="KEY=VALUE",
                    help="extra line for the service's [vault] section (TOML), e.g. "
                         "batch_pipeline_depth=2; repeatable")
    a = ap.parse_args()
    out = os.path.abspath(a.out)
    os.makedirs(out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="callgrind-cold-")
    procs = []
    try:
        iss = Issuer()
        if a.wrk:
            a.no_valgrind = True
            # Never-seen tokens need one line per request (sized for 30,000 exchanges/s:
            # 12,000 ran out at 17,500/s on a fast host); a repeated form needs one.
            a.n = 1 if (a.warm or a.bare) else int(a.wrk * 30000) + 100
            if a.subject_cache:
                a.n = 64
        if a.bare:
            forms = ["grant_type=x"] * (a.warmup + a.n)
        elif a.warm:
            forms = [iss.form(10_000_000)] * (a.warmup + a.n)
        elif a.subject_cache:
            pool = [iss.form(10_000_000 + i) for i in range(64)]
            forms = [pool[i % 64] for i in range(a.warmup + a.n)]
        else:
            forms = [iss.form(10_000_000 + i) for i in range(a.warmup + a.n)]
        bport = free_port()
        bao = subprocess.Popen(
            [os.path.join(ROOT, ".tools/bin/bao"), "server", "-dev", "-dev-no-store-token",
             "-dev-root-token-id=root", f"-dev-listen-address=127.0.0.1:{bport}"],
            stdout=open(os.path.join(work, "bao.log"), "w"), stderr=subprocess.STDOUT)
        procs.append(bao)
        addr = f"http://127.0.0.1:{bport}"
        wait(lambda: urllib.request.urlopen(addr + "/v1/sys/health", timeout=2).status == 200,
             30, "OpenBao")
        bao_api(addr, "POST", "sys/mounts/transit", {"type": "transit"})
        bao_api(addr, "POST", "transit/keys/bench", {"type": "ecdsa-p256"})
        port = free_port()
        cfg = f"""
[server]
listen = "127.0.0.1:{port}"
shutdown_grace_secs = 1
drain_delay_secs = 0
[token]
issuer = "http://127.0.0.1:{port}"
[store]
url = "sqlite://{work}/bench.db"
[log]
level = "warn"
[cache]
enabled = {"true" if a.warm else "false"}
[callers]
xfcc_trusted_proxies = ["127.0.0.1"]
insecure_unbound_callers = false
[management]
enabled = false
[vault]
address = "{addr}"
key_name = "bench"
publish_lead = "0s"
{chr(10).join(a.vault)}
[vault.auth]
method = "token"
token = "root"
[[issuers]]
issuer = "{ISSUER}"
audiences = ["{AUDIENCE}"]
trust_domains = ["cluster.local"]
jwks = {json.dumps(iss.jwks())}
[[mappings]]
name = "bench"
subject = "spiffe://cluster.local/*"
resource = "payments"
participant = "acme"
scopes = ["read"]
ttl_secs = 3600
"""
        cfg_path = os.path.join(work, "exchange.toml")
        with open(cfg_path, "w") as f:
            f.write(cfg)
        cmd = [os.path.abspath(a.bin), "serve", "--config", cfg_path]
        if a.bare:
            cmd = [os.path.abspath(a.bin), "--bare", f"127.0.0.1:{port}"]
        if not a.no_valgrind:
            cmd = ["valgrind", "--tool=callgrind", "--collect-atstart=yes",
                   f"--callgrind-out-file={out}/callgrind.out.%p"] + cmd
        env = {k: v for k, v in os.environ.items()
               if k not in ("VAULT_ADDR", "VAULT_TOKEN", "BAO_ADDR", "BAO_TOKEN")}
        env["NO_COLOR"] = "1"
        svc = subprocess.Popen(cmd, env=env, stdout=open(os.path.join(out, "service.log"), "w"),
                               stderr=subprocess.STDOUT)
        procs.append(svc)
        if a.bare:
            wait(lambda: urllib.request.urlopen(urllib.request.Request(
                f"http://127.0.0.1:{port}/token", data=b"grant_type=x"), timeout=5).status == 200,
                 300, "the bare server")
        else:
            wait(lambda: b'"keys":[{' in urllib.request.urlopen(
                f"http://127.0.0.1:{port}/.well-known/jwks.json", timeout=5).read()
                 .replace(b" ", b""), 300, "the exchange service")
        drive(port, forms[:a.warmup], a.conc)
        before = [] if a.bare else metric_lines(port, "meshpass_transit_batch_size")
        if not a.no_valgrind:
            subprocess.run(["callgrind_control", "-z", str(svc.pid)], check=True,
                           stdout=subprocess.DEVNULL)
        t0 = time.time()
        cpu0 = (cpu_secs(svc.pid), cpu_secs(bao.pid))
        ticks0 = machine_ticks()
        if a.wrk:
            fpath = os.path.join(work, "cold.txt")
            with open(fpath, "w") as f:
                f.write("\n".join(forms[a.warmup:]) + "\n")
            env = dict(os.environ, MESHPASS_WRK_MODE="body", MESHPASS_WRK_FILE=fpath)
            perfs = [
                subprocess.Popen(
                    ["perf", "record", "-q", "-e", "cpu-clock"]
                    + (["-F", "499", "--call-graph", "dwarf,32768"]
                       if a.perf_call_graph == "dwarf" else ["-F", "1999", "-g"])
                    + ["-p", str(pid), "-o", os.path.abspath(path)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                for pid, path in ((svc.pid, a.perf), (bao.pid, a.perf_bao)) if path]
            r = subprocess.run(
                ["wrk", "-t1", "--latency", "--timeout", "10s", f"-c{a.conc}",
                 f"-d{int(a.wrk)}s", "-s", os.path.join(ROOT, "bench/src/wrk.lua"),
                 "-H", "Content-Type: application/x-www-form-urlencoded",
                 "-H", "X-Forwarded-Client-Cert: URI=" + SUBJECT,
                 f"http://127.0.0.1:{port}/token"],
                env=env, capture_output=True, text=True, check=True)
            for perf in perfs:
                perf.send_signal(signal.SIGINT)
                perf.wait(timeout=60)
            ticks1 = machine_ticks()
            w = json.loads(next(l[8:] for l in r.stdout.splitlines() if l.startswith("WRKJSON ")))
            a.n = w["requests"]
            svc_us = (cpu_secs(svc.pid) - cpu0[0]) * 1e6 / max(a.n, 1)
            bao_us = (cpu_secs(bao.pid) - cpu0[1]) * 1e6 / max(a.n, 1)
            print(f"CPU per exchange: service {svc_us:.2f} us, OpenBao {bao_us:.2f} us")
            busy = (ticks1[0] - ticks0[0]) / max(ticks1[1] - ticks0[1], 1)
            print(f"machine busy {100 * busy:.1f} % (every process, /proc/stat)")
            print(f"wrk: {w['requests'] / (w['duration_us'] / 1e6):.0f} req/s, p99 "
                  f"{w['p99_us'] / 1e3:.2f} ms, errors {w['connect'] + w['read'] + w['write'] + w['status'] + w['timeout']}, wrapped {w['wrapped']}")
            if w["wrapped"] and not (a.warm or a.bare or a.subject_cache):
                # Re-sent tokens hit the service's subject cache: not true cold.
                sys.exit(f"INVALID: the never-seen tokens ran out {w['wrapped']} time(s); "
                         "use a shorter --wrk")
        else:
            drive(port, forms[a.warmup:], a.conc)
        dt = time.time() - t0
        if not a.no_valgrind:
            subprocess.run(["callgrind_control", "-d", "measured", str(svc.pid)], check=True,
                           stdout=subprocess.DEVNULL)
        after = [] if a.bare else metric_lines(port, "meshpass_transit_batch_size")
        print(f"{a.n} {'bare' if a.bare else 'warm' if a.warm else 'cold'} exchanges at concurrency {a.conc} in {dt:.1f} s")
        for l in after:
            print("  after:", l)
        for l in before:
            print("  before (warm-up):", l)
        if not a.no_valgrind:
            # The dump of the measured window is the newest file of this pid.
            files = sorted((os.path.getmtime(os.path.join(out, p)), p) for p in os.listdir(out)
                           if p.startswith(f"callgrind.out.{svc.pid}."))
            if files:
                path = os.path.join(out, files[-1][1])
                ir = 0
                with open(path) as f:
                    for line in f:
                        m = re.match(r"^(summary|totals): (\d+)", line)
                        if m:
                            ir = int(m.group(2))
                print(f"instructions (Ir) in the window: {ir:,}  per exchange: {ir / a.n:,.0f}")
                print("profile:", path)
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
