#!/usr/bin/python3
"""sizing.py - measure what one genred replica needs, to size its resources.

    deploy/sizing.py --genred build/genred --model models/gtzan-cnn.gmodel \\
        --audio song.mp3 [--workers 2] [--requests 10] [--concurrency 8,32]

Starts `genred serve` on 127.0.0.1 (an ephemeral port), sends AUDIO to it,
first one request at a time, then with each number of concurrent clients,
and prints per phase: songs per second, the daemon's CPU seconds per song
(from /proc, so other load on the machine does not inflate it) and its
resident memory (now and peak). Use a song typical of your traffic: memory
per request in flight grows with the upload and its decoded length.

Every request goes to 127.0.0.1 only; the run is bounded by --requests and
the concurrency list. Prints one JSON object per phase on stdout.

What it does not do: drive several replicas or a load balancer (that is
tests/test_ops.py), or judge the numbers.
"""
import argparse
import concurrent.futures
import json
import os
import re
import signal
import subprocess
import sys
import time

import requests


class Daemon:
    def __init__(self, genred, model, workers):
        env = {k: v for k, v in os.environ.items() if not k.startswith("GENRED_")}
        self.proc = subprocess.Popen(
            [genred, "serve", "--listen", "127.0.0.1", "--port", "0", "--model", model,
             "--workers", str(workers), "--log-level", "warn"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=env)
        line = self.proc.stdout.readline().decode()
        m = re.match(r"genred: listening on (http://\S+)", line)
        if not m:
            self.proc.kill()
            sys.exit(f"sizing.py: genred did not start (exit status {self.proc.wait()})")
        self.url = m.group(1)

    def cpu_seconds(self):
        fields = open(f"/proc/{self.proc.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def memory_mib(self):
        status = open(f"/proc/{self.proc.pid}/status").read()
        get = lambda key: int(re.search(rf"^{key}:\s+(\d+) kB", status, flags=re.M).group(1))
        return get("VmRSS") / 1024, get("VmHWM") / 1024

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=60)
        self.proc.stdout.close()
        return rc


def post(url, body):
    with requests.Session() as s:
        s.trust_env = False
        r = s.post(url + "/v1/classify", data=body,
                   headers={"Content-Type": "application/octet-stream"}, timeout=300)
    return r.status_code


def phase(d, body, clients, count):
    cpu0, t0 = d.cpu_seconds(), time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        statuses = list(pool.map(lambda _: post(d.url, body), range(count)))
    wall, cpu = time.monotonic() - t0, d.cpu_seconds() - cpu0
    rss, peak = d.memory_mib()
    return {"clients": clients, "requests": count,
            "statuses": {str(s): statuses.count(s) for s in sorted(set(statuses))},
            "songs_per_s": round(count / wall, 3), "cpu_s_per_song": round(cpu / count, 3),
            "rss_mib": round(rss, 1), "peak_rss_mib": round(peak, 1)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--genred", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--audio", required=True)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--requests", type=int, default=10, help="per phase, at least 1")
    ap.add_argument("--concurrency", default="8,32", help="comma-separated client counts")
    a = ap.parse_args()
    levels = [int(x) for x in a.concurrency.split(",") if x]
    if a.requests < 1 or any(c < 1 for c in levels):
        ap.error("--requests and every --concurrency level must be at least 1")
    body = open(a.audio, "rb").read()
    d = Daemon(a.genred, a.model, a.workers)
    try:
        rss, _ = d.memory_mib()
        print(json.dumps({"phase": "idle", "workers": a.workers, "rss_mib": round(rss, 1)}))
        post(d.url, body)  # warm-up: first-touch allocations, caches
        print(json.dumps({"phase": "sequential", **phase(d, body, 1, a.requests)}), flush=True)
        for c in levels:
            print(json.dumps({"phase": "concurrent", **phase(d, body, c, max(a.requests, 2 * c))}),
                  flush=True)
    finally:
        rc = d.stop()
    if rc != 0:
        sys.exit(f"sizing.py: genred exited with {rc} after SIGTERM")


if __name__ == "__main__":
    main()
