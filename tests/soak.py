#!/usr/bin/python3
"""soak.py - a bounded soak: concurrent good and hostile uploads for a while.

Starts one `genred serve` (the test fixtures' way, tests/conftest.py), then
CLIENTS threads send requests back to back for DURATION seconds, each drawn
from a fixed mix (MIX): real music (MP3, WAV, Ogg made from GTZAN excerpts at
run time), a short tone, multipart uploads, GETs, and hostile input from
test_hostile.py (random bytes, truncations, lying headers, broken multipart,
oversized headers and uploads, clients that hang up, smuggling shapes) and
slow clients (a slowloris connection, cut at header_timeout_s; an upload of
a byte a second, 408). Every kind has the one status it must get; anything
else is an unexpected status. Meanwhile a prober asks /healthz and /readyz
on the ops listener every PROBE_EVERY_S: every probe must be a 200 within
PROBE_LIMIT_S.

Reports requests served, statuses by kind, errors by status, latency
percentiles (all requests, and classifications of the 30 s excerpts alone),
and memory: VmRSS (and its anonymous part, RssAnon) sampled every second
under load, and measured idle after a warm-up phase (the first
WARMUP_FRACTION of the run) and at the end; drift = end minus warm-up.

Fails (exit status 1) on any unexpected status, a failed or slow probe, a
daemon that died or did not exit 0 on SIGTERM, fewer than MIN_SERVED
requests, or RSS drift over --max-rss-drift-mb. Latency is reported, not
judged: CI machines are shared.

  soak.py [--duration 90] [--clients 4] [--max-rss-drift-mb 16]

Needs the same environment as the pytest tests (GENRED_BIN, GENRED_SOURCE,
GENRED_SHARED; `meson test --suite soak` sets them).

What it does not do: find the daemon's throughput ceiling (bench/), or
judge answers beyond their status (test_api.py, test_hostile.py).
"""
import argparse
import collections
import json
import os
import pathlib
import random
import socket
import sys
import tempfile
import threading
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import conftest  # noqa: E402  (the daemon and test audio, as the tests use them)
import test_hostile as th  # noqa: E402  (the hostile inputs)

WARMUP_FRACTION = 0.25
IDLE_SETTLE_S = 1.0
MIN_SERVED = 50
HEADER_TIMEOUT_S = 3     # the daemon's header_timeout_s: slowloris ends after it
PROBE_EVERY_S = 0.25
PROBE_LIMIT_S = 1.0


def env_path(name):
    value = os.environ.get(name)
    if not value or not pathlib.Path(value).exists():
        sys.exit(f"soak.py: ${name} must name an existing path (meson test sets it)")
    return pathlib.Path(value)


class Kind:
    """One kind of request: how to send it, the status it must get, and how
    often it is drawn."""

    def __init__(self, name, weight, status, send):
        self.name, self.weight, self.status, self.send = name, weight, status, send


def build_mix(inp, port):
    """The kinds and their weights: about two thirds good requests."""
    def raw(body, ctype, extra=b"", **kw):
        def send():
            answers = th.exchange(port, th.request_bytes(port, body, ctype, extra, **kw))
            return answers[-1][0]
        return send

    def get(path):
        def send():
            (a,) = th.exchange(port, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            return a[0]
        return send

    def hang_up(data, after_s):
        def send():
            th.hang_up(port, data, after_s)
            return None  # nothing to read: the client left
        return send

    def trickle(head, drip, every_s, limit_s):
        """Sends head, then drip every every_s until the server answers or
        closes; returns the answer's status, or "cut" for a close without
        one."""
        def send():
            got = b""
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(head)
                s.settimeout(every_s)
                end = time.monotonic() + limit_s
                while time.monotonic() < end:
                    try:
                        chunk = s.recv(65536)
                    except socket.timeout:
                        s.sendall(drip)
                        continue
                    except ConnectionResetError:
                        break
                    if not chunk:
                        break
                    got += chunk
            return th.read_responses(got)[0][0] if got else "cut"
        return send

    mp3_req = th.request_bytes(port, inp.mp3, "audio/mpeg")
    info = b"LIST" + (0xFFFFFFF0).to_bytes(4, "little") + b"INFO"
    mix = [
        Kind("excerpt-mp3", 14, 200, raw(inp.mp3, "audio/mpeg")),
        Kind("excerpt-wav", 6, 200, raw(inp.wav, "audio/wav")),
        Kind("excerpt-ogg", 4, 200, raw(inp.ogg, "audio/ogg")),
        Kind("tone-multipart", 8, 200,
             raw(th.multipart(b"b0und", [(b"file", b"t.wav", inp.tone)]),
                 "multipart/form-data; boundary=b0und")),
        Kind("tone-chunked", 4, 200,
             raw(th.chunked(inp.tone), "audio/wav", b"Transfer-Encoding: chunked\r\n",
                 length=False)),
        Kind("healthz", 4, 200, get("/healthz")),
        Kind("metrics", 2, 200, get("/metrics")),
        Kind("model", 2, 200, get("/v1/model")),
        Kind("empty", 2, 400, raw(b"", "audio/mpeg")),
        Kind("random-bytes", 3, 415, raw(inp.noise, "application/octet-stream")),
        Kind("png-as-mp3", 2, 415,
             raw(th.multipart(b"b0und", [(b"file", b"x.mp3", inp.png)]),
                 "multipart/form-data; boundary=b0und")),
        Kind("mp3-cut-to-2k", 2, 422, raw(inp.mp3[:2048], "audio/mpeg")),
        Kind("wav-list-4gb", 2, 422,
             raw(th.wav_bytes(1, 16000, 16, 16000, extra_chunks=info + bytes(8)), "audio/wav")),
        Kind("multipart-unclosed", 2, 400,
             raw(th.multipart(b"b0und", [(b"file", b"t.wav", inp.tone)], closing=False),
                 "multipart/form-data; boundary=b0und")),
        Kind("bad-query", 1, 400, raw(inp.tone, "audio/wav", path="/v1/classify?trim=2")),
        Kind("huge-header", 1, 431,
             raw(inp.tone, "audio/wav", b"X-Huge: " + b"a" * 65536 + b"\r\n")),
        Kind("over-limit", 1, 413,
             raw(b"", "audio/wav", b"Content-Length: 99999999999\r\n", length=False)),
        Kind("hang-up-mid-upload", 2, None, hang_up(mp3_req[:len(mp3_req) // 2], 0.02)),
        Kind("hang-up-before-answer", 2, None, hang_up(mp3_req, 0.0)),
        Kind("smuggled-content-length", 1, 400,
             raw(b"0\r\n\r\nGET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", "audio/wav",
                 b"Transfer-Encoding: chunked\r\n")),
        Kind("slowloris", 1, "cut",
             trickle(b"GET / HTTP/1.1\r\nHost: x\r\n", b"X-a: b\r\n", 0.5, 30)),
        Kind("slow-upload", 1, 408,
             trickle(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: audio/mpeg\r\n"
                     b"Content-Length: 100000\r\n\r\n", b"x", 1.0, 30)),
    ]
    return mix


def percentile(values, q):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q / 100.0 * (len(v) - 1))))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=90.0, help="seconds of load (default 90)")
    ap.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    ap.add_argument("--max-rss-drift-mb", type=float, default=16.0,
                    help="largest idle VmRSS growth after warm-up (default 16)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    binary = env_path("GENRED_BIN")
    source = env_path("GENRED_SOURCE")
    gtzan = env_path("GENRED_SHARED") / "data" / "gtzan16k"
    model = source / "models" / "gtzan-cnn.gmodel"

    with tempfile.TemporaryDirectory(prefix="genred-soak-") as tmp:
        tmp = pathlib.Path(tmp)
        (tmp / "audio").mkdir()
        audio = conftest.Audio(gtzan, tmp / "audio")
        inp = th.Inputs(audio)
        inp.ogg = audio.excerpt_ogg.read_bytes()
        inp.long_wav = audio.long_wav.read_bytes()
        flags = conftest._base_flags(source, model)
        flags["max-upload-bytes"] = str(th.UPLOAD_LIMIT)
        flags["workers"] = "2"  # the same load shape on any machine
        flags["ops-port"] = "0"
        flags["header-timeout-s"] = str(HEADER_TIMEOUT_S)
        daemon = conftest.Daemon(binary, flags, tmp / "daemon.log")
        try:
            ok = soak(daemon, inp, args)
        finally:
            rc = daemon.stop()
        if rc != 0:
            print(f"FAIL: daemon exit status {rc} after SIGTERM\n{daemon.log_tail()}")
            ok = False
    print("soak: PASS" if ok else "soak: FAIL")
    return 0 if ok else 1


def soak(daemon, inp, args):
    mix = build_mix(inp, daemon.port)
    weights = [k.weight for k in mix]
    lock = threading.Lock()
    statuses = collections.defaultdict(collections.Counter)  # kind -> status -> n
    unexpected = []
    latency = collections.defaultdict(list)  # kind -> seconds
    rnds = [random.Random(args.seed * 1000 + i) for i in range(args.clients)]

    def client(i, until):
        while time.monotonic() < until:
            kind = rnds[i].choices(mix, weights)[0]
            t0 = time.monotonic()
            try:
                status = kind.send()
            except Exception as e:  # noqa: BLE001 - a failed exchange is a finding
                status = f"exception {type(e).__name__}: {e}"
            dt = time.monotonic() - t0
            with lock:
                statuses[kind.name][status] += 1
                latency[kind.name].append(dt)
                if status != kind.status:
                    unexpected.append((kind.name, kind.status, status))

    def load(seconds):
        until = time.monotonic() + seconds
        threads = [threading.Thread(target=client, args=(i, until), daemon=True)
                   for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(seconds + 180)

    def idle_memory():
        """VmRSS and RssAnon (kB) once the load has stopped: requests in
        flight hold tens of MB each, so only idle figures compare."""
        time.sleep(IDLE_SETTLE_S)
        return th.rss_kb(daemon), th.rss_kb(daemon, "RssAnon")

    samples = []  # (seconds since start, VmRSS kB, RssAnon kB), once a second
    t_start = time.monotonic()
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            try:
                samples.append((time.monotonic() - t_start, th.rss_kb(daemon),
                                th.rss_kb(daemon, "RssAnon")))
            except (OSError, AssertionError):
                return  # the daemon is gone; judged below
            stop.wait(1.0)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    probes = []  # (path, status or exception, seconds)

    def probe():
        paths = ("/healthz", "/readyz")
        while not stop.is_set():
            path = paths[len(probes) % 2]
            t0 = time.monotonic()
            try:
                status = daemon.request("GET", path, ops=True, timeout=5).status_code
            except Exception as e:  # noqa: BLE001 - a failed probe is a finding
                status = f"{type(e).__name__}: {e}"
            probes.append((path, status, time.monotonic() - t0))
            stop.wait(PROBE_EVERY_S)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    start_mem = (th.rss_kb(daemon), th.rss_kb(daemon, "RssAnon"))
    warm_s = args.duration * WARMUP_FRACTION
    # Each worker's model workspace is sized for max_batch chunks but only
    # touched as far as the largest batch so far; two 200-chunk uploads at
    # once fill every worker's batches, so what the workspaces will ever
    # take is in the warm-up figure, not counted as drift.
    primers = [threading.Thread(target=lambda: statuses["prime-10min-wav"].update(
        [th.exchange(daemon.port, th.request_bytes(daemon.port, inp.long_wav, "audio/wav",
                                                   path="/v1/classify?trim=0"))[-1][0]]))
               for _ in range(2)]
    for t in primers:
        t.start()
    for t in primers:
        t.join(300)
    if statuses["prime-10min-wav"][200] != 2:
        unexpected.append(("prime-10min-wav", 200, dict(statuses["prime-10min-wav"])))
    load(warm_s)
    warm_mem = idle_memory() if daemon.alive() else None
    load(args.duration - warm_s)
    end_mem = idle_memory() if daemon.alive() else None
    alive = daemon.alive()
    stop.set()
    sampler.join(5)
    prober.join(10)
    bad_probes = [p for p in probes if p[1] != 200 or p[2] > PROBE_LIMIT_S]

    served = sum(sum(c.values()) for c in statuses.values())
    by_status = collections.Counter()
    for c in statuses.values():
        by_status.update(c)
    all_lat = [x for v in latency.values() for x in v]
    music = latency["excerpt-mp3"] + latency["excerpt-wav"] + latency["excerpt-ogg"]
    mb = lambda kb: kb / 1024.0  # noqa: E731
    drift_mb = mb(end_mem[0] - warm_mem[0]) if warm_mem and end_mem else float("nan")
    anon_drift_mb = mb(end_mem[1] - warm_mem[1]) if warm_mem and end_mem else float("nan")

    print(f"soak: {args.duration:.0f} s, {args.clients} clients, {served} requests "
          f"({served / args.duration:.1f}/s)")
    print("statuses by kind (expected in brackets; None = the client hung up, nothing to read):")
    print(f"  {'prime-10min-wav':22s} [200] " + ", ".join(
        f"{s}: {n}" for s, n in statuses["prime-10min-wav"].items()))
    for k in mix:
        counts = ", ".join(f"{s}: {n}" for s, n in sorted(statuses[k.name].items(), key=str))
        print(f"  {k.name:22s} [{k.status}] {counts}")
    print("errors by status: " + ", ".join(f"{s}: {n}" for s, n in sorted(
        by_status.items(), key=str) if s not in (200, None)))
    print(f"probes on the ops listener (/healthz, /readyz every {PROBE_EVERY_S} s): "
          f"{len(probes)}, failed or over {PROBE_LIMIT_S:.0f} s: {len(bad_probes)}, "
          f"max {max((p[2] for p in probes), default=0) * 1e3:.0f} ms")
    print(f"latency all requests: p50 {percentile(all_lat, 50) * 1e3:.0f} ms, "
          f"p99 {percentile(all_lat, 99) * 1e3:.0f} ms, max {max(all_lat, default=0) * 1e3:.0f} ms")
    print(f"latency 30 s songs:   p50 {percentile(music, 50) * 1e3:.0f} ms, "
          f"p99 {percentile(music, 99) * 1e3:.0f} ms (n={len(music)})")
    if warm_mem and end_mem:
        print(f"idle VmRSS: start {mb(start_mem[0]):.1f} MB, after warm-up ({warm_s:.0f} s) "
              f"{mb(warm_mem[0]):.1f} MB, end {mb(end_mem[0]):.1f} MB: drift {drift_mb:+.1f} MB "
              f"(limit {args.max_rss_drift_mb:.0f}); RssAnon drift {anon_drift_mb:+.1f} MB")
    step = max(1, len(samples) // 12)
    print("VmRSS/RssAnon MB under load: " + ", ".join(
        f"{t:.0f}s {mb(v):.0f}/{mb(a):.0f}" for t, v, a in samples[::step]))
    print("summary " + json.dumps({
        "served": served, "by_status": {str(k): v for k, v in by_status.items()},
        "unexpected": len(unexpected), "p99_ms": round(percentile(all_lat, 99) * 1e3, 1),
        "p99_song_ms": round(percentile(music, 99) * 1e3, 1),
        "rss_drift_mb": round(drift_mb, 1), "probes": len(probes),
        "probes_failed": len(bad_probes)}))

    ok = True
    if not alive:
        print(f"FAIL: the daemon died\n{daemon.log_tail()}")
        ok = False
    if unexpected:
        print(f"FAIL: {len(unexpected)} unexpected statuses, e.g. {unexpected[:10]}")
        ok = False
    if bad_probes or len(probes) < 10:
        print(f"FAIL: {len(bad_probes)} of {len(probes)} probes failed or were slow, "
              f"e.g. {bad_probes[:5]}")
        ok = False
    if served < MIN_SERVED:
        print(f"FAIL: only {served} requests served (at least {MIN_SERVED} expected)")
        ok = False
    if not (drift_mb <= args.max_rss_drift_mb):
        print(f"FAIL: idle VmRSS drifted {drift_mb:+.1f} MB after warm-up")
        ok = False
    return ok


if __name__ == "__main__":
    sys.exit(main())
