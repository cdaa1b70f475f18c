"""run.py - genred's benchmarks, side by side with their baselines.

    bench/run [--quick] [--only NAME,...]      (builds, then runs this)

Every comparison is measured in the same run, interleaved, and reported as
medians and ratios, because the machine is shared and noisy: absolute
numbers move with the background load, ratios much less. Where a stage is
timed inside one process, CPU time is reported beside wall time: a loaded
machine stretches wall time, not the CPU a stage needs.

Benchmarks (each prints a Markdown table; all land in bench/out/results.md
and bench/out/results.json):
  e2e       one 3-minute 44.1 kHz stereo 192 kbit/s MP3: `ffmpeg -i song.mp3
            -f null -` (decode only, the floor) versus genred over HTTP
            (warm daemon), `genred classify` (a process per song) and
            engine_classify() in process
  torch     the same song through the PyTorch reference (bench/torch_ref.py)
            on the same cores versus genred, end to end and features +
            inference
  stages    decode, resample, index, window decode, mel, inference, JSON;
            the CNN's GFLOP/s against OpenBLAS sgemm measured in the same
            process; FFT plans estimated / measured / from wisdom
  load      songs/s and p50/p99 latency over 127.0.0.1 with 1, 2, 8, 32
            concurrent clients, 1 and 2 workers; cross-request batching
            (3.5-second clips of one chunk each, max_batch 1 versus 8)
  memory    peak RSS (VmHWM) with 16 concurrent 10 MB uploads
  coldstart process start to /readyz = 200, with and without FFTW wisdom
  backbone  the pretrained backbone (scripts/get-model efficientat-mn04, from
            ../shared's checkpoint): the 3-minute MP3 on a warm daemon
            against the ffmpeg floor (beside the bundled CNN), the C engine
            against PyTorch on the same chunks (bench/torch_backbone.py) on
            one thread and on every core, and the cost of each layer
  catalogue songs per second per core over a folder of 300 generated
            3-minute MP3s (bench/make-catalogue): one song at a time,
            `genred classify`'s catalogue mode, a daemon fed by
            scripts/classify-remote; the --jobs sweep; max_chunks: speed
            and agreement with the full analysis (not in the default set:
            ~15 minutes; --only catalogue)

Audio is made from the shared GTZAN excerpts with the ffmpeg CLI into
bench/out/ (gitignored); servers bind 127.0.0.1 on ephemeral ports; every
loop is bounded in count and time.

What it does not do: pass or fail anything (targets are printed beside the
numbers), or run in the test suite.
"""
import argparse
import http.client
import json
import os
import re
import resource
import select
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
SHARED = Path(os.environ.get("GENRED_SHARED", ROOT.parent / "shared"))
GTZAN = SHARED / "data" / "gtzan16k"
MODEL = ROOT / "models" / "gtzan-cnn.gmodel"
BACKBONE_CHECKPOINT = SHARED / "models" / "efficientat-mn04" / "mn04_as_mAP_432.pt"
LISTEN = re.compile(rb"listening on http://127\.0\.0\.1:(\d+)")

results = {}
report = []


def say(text=""):
    print(text, flush=True)
    report.append(text)


def table(headers, rows):
    say("| " + " | ".join(headers) + " |")
    say("|" + "|".join("---" for _ in headers) + "|")
    for r in rows:
        say("| " + " | ".join(str(c) for c in r) + " |")
    say()


def f1(x):
    return f"{x:.1f}"


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))
    return xs[k]


# --- inputs -----------------------------------------------------------------

def ffmpeg(*args):
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *map(str, args)], check=True)


def concat_mp3(out, clips, seconds, bitrate="192k"):
    """GTZAN clips (30 s, 16 kHz mono) one after the other, as a 44.1 kHz
    stereo MP3 whose channels differ (one is delayed 11 ms)."""
    if out.exists():
        return out
    inputs = []
    for c in clips:
        inputs += ["-i", c]
    ffmpeg(*inputs, "-filter_complex",
           f"concat=n={len(clips)}:v=0:a=1,aresample=44100,pan=stereo|c0=c0|c1=c0,"
           f"adelay=0|11,atrim=0:{seconds}", "-c:a", "libmp3lame", "-b:a", bitrate, out)
    return out


def make_inputs():
    audio = OUT / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    rock = sorted((GTZAN / "rock").glob("*.flac"))
    mixed = [p for g in ("blues", "disco", "jazz", "metal", "pop", "reggae", "hiphop",
                         "country") for p in sorted((GTZAN / g).glob("*.flac"))[:2]]
    if len(rock) < 6 or len(mixed) < 16:
        sys.exit(f"run.py: GTZAN excerpts missing under {GTZAN} (set GENRED_SHARED)")
    song = concat_mp3(audio / "song.mp3", rock[:6], 180)
    clip = concat_mp3(audio / "clip3.mp3", rock[6:7], 3.5)
    big = concat_mp3(audio / "big10m.mp3", mixed[:14], 417)  # 10.0 MB at 192 kbit/s
    return song, clip, big


# --- processes --------------------------------------------------------------

class Daemon:
    """genred serve on 127.0.0.1:0 with extra flags; stopped with SIGTERM."""

    def __init__(self, genred, *flags, env=None, model=MODEL):
        self.t0 = time.perf_counter()
        env = genred_env(env)
        self.proc = subprocess.Popen(
            [genred, "serve", "--config", ROOT / "conf" / "genred.conf", "--port", "0",
             "--model", model, "--log-level", "warn", *map(str, flags)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + 60
        line = b""
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.proc.stdout], [], [], 1)
            if r:
                line += os.read(self.proc.stdout.fileno(), 4096)
                m = LISTEN.search(line)
                if m:
                    self.port = int(m.group(1))
                    return
            if self.proc.poll() is not None:
                break
        self.stop()
        sys.exit(f"run.py: genred serve {flags} did not start")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def cpu_seconds(self):
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def status(self, key):
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])  # kB
        return 0

    def metric(self, name):
        text = get(self.port, "/metrics")[1].decode()
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return float("nan")


def post(port, body, ctype="audio/mpeg", timeout=120):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("POST", "/v1/classify", body=body, headers={"Content-Type": ctype})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def get(port, path, timeout=10):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def genred_env(env=None):
    """env (default: this one) without GENRED_* variables: genred would read
    them as settings (and refuse names such as GENRED_SHARED, which is the
    bench's own); every setting here is a flag."""
    return {k: v for k, v in (env or os.environ).items() if not k.startswith("GENRED_")}


def timed_child(cmd, **kw):
    """Wall seconds and CPU seconds (user + sys) of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


# --- benchmarks -------------------------------------------------------------

def bench_e2e(args, song):
    say("## 1. End to end: one 3-minute MP3 versus the decode-only floor")
    say()
    reps = 5 if args.quick else 15
    d = Daemon(args.genred)
    body = song.read_bytes()
    post(d.port, body)  # warm
    rows = {"ffmpeg": ([], []), "http": ([], []), "cli": ([], [])}
    try:
        for _ in range(reps):
            w, c = timed_child(["ffmpeg", "-nostdin", "-v", "error", "-i", song, "-f", "null", "-"])
            rows["ffmpeg"][0].append(w * 1e3)
            rows["ffmpeg"][1].append(c * 1e3)
            c0, t0 = d.cpu_seconds(), time.perf_counter()
            status, _ = post(d.port, body)
            rows["http"][0].append((time.perf_counter() - t0) * 1e3)
            rows["http"][1].append((d.cpu_seconds() - c0) * 1e3)
            assert status == 200, status
            w, c = timed_child([args.genred, "classify", "--config", ROOT / "conf" / "genred.conf",
                                "--model", MODEL, song], cwd=ROOT, env=genred_env())
            rows["cli"][0].append(w * 1e3)
            rows["cli"][1].append(c * 1e3)
    finally:
        d.stop()
    floor_w, floor_c = med(rows["ffmpeg"][0]), med(rows["ffmpeg"][1])
    floor_b = min(rows["ffmpeg"][0])
    out = {}
    trs = []
    for name, label in (("ffmpeg", "`ffmpeg -i song.mp3 -f null -` (floor)"),
                        ("http", "genred, POST to a warm daemon"),
                        ("cli", "`genred classify song.mp3` (new process)")):
        w, c, b = med(rows[name][0]), med(rows[name][1]), min(rows[name][0])
        out[name] = {"wall_ms": w, "cpu_ms": c, "best_wall_ms": b}
        trs.append([label, f1(w), f"{w / floor_w:.2f}", f1(b), f"{b / floor_b:.2f}", f1(c),
                    f"{c / floor_c:.2f}"])
    table(["per song", "wall ms", "x floor", "best wall ms", "x floor (best)", "CPU ms",
           "x floor CPU"], trs)
    say(f"Medians (and the fastest) of {reps} interleaved runs. Targets: <= 1.5 x the floor; "
        "< 1.0 x with window decode on several cores. CPU ms of the daemon = its utime + "
        "stime over the request (/proc). genred's wall time falls below its CPU time only "
        "when a second core is free. ffmpeg's CPU ms (its utime + stime) exceed its wall time: "
        "its CLI runs two threads, and converts the decoded audio to 16-bit PCM for the null "
        "muxer.")
    say()
    results["e2e"] = out


def bench_stages(args, song):
    say("## 3. Stage breakdown and the CNN against sgemm peak (in process)")
    say()
    reps = 5 if args.quick else 15
    r = subprocess.run([args.bench, "stages", MODEL, song, "44100", str(reps)], cwd=ROOT,
                       check=True, capture_output=True, text=True)
    s = json.loads(r.stdout)
    results["stages"] = s
    rows = []
    names = [("decode_native_ms", "decode + downmix, whole file, 44.1 kHz (in-process floor)"),
             ("decode_ms", "decode + downmix + resample to 16 kHz, whole file (sequential)"),
             ("index_ms", "packet index only (audio_open)"),
             ("window_decode_1t_ms", "trimmed window (150 s), 1 thread"),
             ("window_decode_ms", f"trimmed window, {s['cores']} spans in parallel"),
             ("features_ms", "features_compute: window decode + log-mel (as served)"),
             ("mel_ms", f"log-mel of {s['chunks']} chunks, 1 thread"),
             ("mel_all_cores_ms", f"log-mel of {s['chunks']} chunks, {s['cores']} threads"),
             ("inference_batch1_ms", f"inference, {s['chunks']} chunks one at a time, 1 thread"),
             ("inference_1t_ms", f"inference, {s['chunks']} chunks in batches of "
                                 f"{s['max_batch']}, 1 thread"),
             ("inference_ms", f"inference through the batcher ({s['workers']} workers x "
                              f"{s['blas_threads']} BLAS threads)"),
             ("answer_ms", "rest of engine_classify (votes, JSON objects, hand-offs)"),
             ("json_ms", "JSON text (json_dumps)"),
             ("classify_ms", "engine_classify end to end")]
    for k, label in names:
        cpu = "-" if k == "answer_ms" else (f1(s[k + "_cpu"]) if s[k + "_cpu"] >= 1
                                              else f"{s[k + '_cpu']:.3f}")
        rows.append([label, f1(s[k]) if s[k] >= 1 else f"{s[k]:.3f}", cpu])
    table(["stage (one 3-minute song)", "wall ms", "CPU ms"], rows)
    resample = s["decode_ms_cpu"] - s["decode_native_ms_cpu"]
    say(f"Resampling 44.1 -> 16 kHz costs {resample:.1f} ms CPU (decode at 16 kHz minus decode "
        f"at 44.1 kHz). Window decode: {s['window_decode_1t_ms_cpu'] / s['decode_ms_cpu']:.2f} x "
        f"the whole decode's CPU; wall-time speed-up of {s['cores']} spans over one thread: "
        f"{s['window_decode_1t_ms'] / s['window_decode_ms']:.2f} x (1.00 x when no second core "
        "is free). Batches of {0} instead of single chunks: {1:.2f} x the inference CPU."
        .format(s['max_batch'], s['inference_1t_ms_cpu'] / s['inference_batch1_ms_cpu']))
    say()
    peak1, peak = s["sgemm_1t_gflops_cpu"], s["sgemm_gflops"]
    table(["", "GFLOP/s", "share of sgemm peak"], [
        ["OpenBLAS sgemm 1024^3, 1 thread (per busy core, CPU time)", f1(peak1), "1.00"],
        [f"CNN, 1 thread, batches of {s['max_batch']} (CPU time)", f1(s["cnn_1t_gflops_cpu"]),
         f"{s['cnn_1t_gflops_cpu'] / peak1:.2f}"],
        [f"OpenBLAS sgemm 1024^3, {s['cores']} threads (wall)", f1(peak), "1.00"],
        ["CNN through the batcher (wall)", f1(s["cnn_gflops"]), f"{s['cnn_gflops'] / peak:.2f}"],
    ])
    say(f"{s['cnn_gflop_per_song']:.2f} GFLOP per song ({s['chunks']} chunks). Target: >= 0.60 "
        "of peak. Medians of {0} runs.".format(reps))
    say()
    r = subprocess.run([args.bench, "fftw", MODEL, "150", str(reps)], cwd=ROOT, check=True,
                       capture_output=True, text=True)
    fw = json.loads(r.stdout)
    results["fftw"] = fw
    if fw:
        table(["FFT plan (n_fft 1024)", "make ms", f"log-mel of {fw['chunks']} chunks, ms"], [
            ["FFTW_ESTIMATE (no wisdom)", f"{fw['estimate_create_ms']:.2f}", f1(fw["mel_estimated_ms"])],
            ["FFTW_MEASURE, measured now", f1(fw["measure_learn_ms"]), f1(fw["mel_measured_ms"])],
            ["FFTW_MEASURE from wisdom", f"{fw['wisdom_create_ms']:.2f}", f1(fw["mel_measured_ms"])],
        ])


def bench_torch(args, song):
    say("## 2. The PyTorch reference pipeline on the same cores")
    say()
    reps = 3 if args.quick else 5
    cores = os.cpu_count()
    tr, gs = [], []
    for _ in range(2):  # alternated, so both see the same background
        r = subprocess.run(["/usr/bin/python3", ROOT / "bench" / "torch_ref.py", MODEL, song,
                            str(reps), str(cores)], check=True, capture_output=True, text=True)
        tr.append(json.loads(r.stdout))
        r = subprocess.run([args.bench, "stages", MODEL, song, "44100", str(reps)], cwd=ROOT,
                           check=True, capture_output=True, text=True)
        gs.append(json.loads(r.stdout))
    t = {k: med([x[k] for x in tr]) for k in ("decode_ms", "resample_ms", "mel_ms",
                                               "inference_ms", "total_ms")}
    g = {k: med([x[k] for x in gs]) for k in ("features_ms", "mel_all_cores_ms",
                                               "inference_ms", "classify_ms", "decode_ms",
                                               "decode_native_ms")}
    # genred resamples inside its decode: its resampling time is the whole
    # decode at 16 kHz minus the whole decode at 44.1 kHz (wall, one thread).
    g_resample = max(0.0, g["decode_ms"] - g["decode_native_ms"])
    t_mi, g_mi = t["mel_ms"] + t["inference_ms"], g["mel_all_cores_ms"] + g["inference_ms"]
    t_fi, g_fi = t["resample_ms"] + t_mi, g_resample + g_mi

    def faster(a, b):
        return f"{a / b:.1f} x" if b > 0 else "-"
    table(["per song, wall ms", "PyTorch", "genred", "genred faster by"], [
        ["decode", f1(t["decode_ms"]), f1(g["decode_native_ms"]),
         faster(t["decode_ms"], g["decode_native_ms"])],
        ["resample to 16 kHz", f1(t["resample_ms"]), f1(g_resample),
         faster(t["resample_ms"], g_resample)],
        ["log-mel", f1(t["mel_ms"]), f1(g["mel_all_cores_ms"]),
         faster(t["mel_ms"], g["mel_all_cores_ms"])],
        ["inference", f1(t["inference_ms"]), f1(g["inference_ms"]),
         faster(t["inference_ms"], g["inference_ms"])],
        ["log-mel + inference", f1(t_mi), f1(g_mi), faster(t_mi, g_mi)],
        ["features + inference (resample + log-mel + inference)", f1(t_fi), f1(g_fi),
         faster(t_fi, g_fi)],
        ["end to end", f1(t["total_ms"]), f1(g["classify_ms"]),
         faster(t["total_ms"], g["classify_ms"])],
    ])
    agree = tr[-1]["top"]
    say(f"torch {tr[-1]['torch']}, torchaudio {tr[-1]['torchaudio']} on {cores} threads; "
        f"both pipelines answer '{agree}' for this song. Both use all {cores} cores: torch "
        "through its intra-op threads, genred as it serves (log-mel of contiguous chunk runs "
        "on one thread per core, inference through the batcher's workers). genred's decode "
        "row is its whole-file decode at 44.1 kHz, its resample row the whole-file decode at "
        "16 kHz minus that; its end to end is engine_classify (window decode on all cores). "
        "Targets: >= 2 x end to end, >= 3 x features + inference.")
    say()
    results["torch"] = {"torch": t, "genred": g, "runs": tr}


def load_run(port, body, clients, requests_total, ctype="audio/mpeg"):
    lat, errors = [], []
    lock = threading.Lock()
    left = [requests_total]

    def client():
        while True:
            with lock:
                if left[0] == 0:
                    return
                left[0] -= 1
            t0 = time.perf_counter()
            try:
                status, _ = post(port, body, ctype)
            except OSError as e:
                status = str(e)
            dt = time.perf_counter() - t0
            with lock:
                (lat if status == 200 else errors).append(dt if status == 200 else status)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    return {"clients": clients, "requests": requests_total, "ok": len(lat), "errors": errors[:5],
            "songs_per_s": len(lat) / wall, "p50_ms": pct(lat, 50) * 1e3,
            "p99_ms": pct(lat, 99) * 1e3}


def bench_load(args, song, clip):
    say("## 4. Throughput under concurrent load (127.0.0.1)")
    say()
    body = song.read_bytes()
    concs = (1, 2, 8, 32)
    out = {}
    rows = []
    for workers in (1, 2):
        d = Daemon(args.genred, "--workers", workers, "--queue-capacity", 1000,
                   "--max-connections", 256)
        try:
            post(d.port, body)
            for c in concs:
                n = max(8 if args.quick else 16, 2 * c)
                r = load_run(d.port, body, c, n)
                out[f"w{workers}_c{c}"] = r
                rows.append([workers, c, r["ok"], f"{r['songs_per_s']:.2f}", f1(r["p50_ms"]),
                             f1(r["p99_ms"]), len(r["errors"])])
        finally:
            d.stop()
    table(["workers", "clients", "songs", "songs/s", "p50 ms", "p99 ms", "errors"], rows)
    for c in concs:
        a, b = out.get(f"w1_c{c}"), out.get(f"w2_c{c}")
        if a and b and a["songs_per_s"] > 0:
            out[f"scaling_c{c}"] = b["songs_per_s"] / a["songs_per_s"]
    say("3-minute MP3s (50 chunks each after the trim). Scaling 1 -> 2 workers (songs/s): " +
        ", ".join(f"{c} clients {out[f'scaling_c{c}']:.2f} x" for c in concs
                  if f"scaling_c{c}" in out) + ". p99 of this few requests is close to the max.")
    say()

    # Cross-request batching: 3.5 s clips are one chunk each, so every batch
    # of more than one chunk holds chunks of several requests; max_batch 1
    # turns that off.
    body = clip.read_bytes()
    rows = []
    for mb in (1, 8):
        d = Daemon(args.genred, "--max-batch", mb, "--queue-capacity", 1000,
                   "--max-active-requests", 64)
        try:
            post(d.port, body)
            b0, c0 = d.metric("genred_batches_total"), d.metric("genred_chunks_total")
            cpu0 = d.cpu_seconds()
            r = load_run(d.port, body, 16, 64 if args.quick else 256)
            b1, c1 = d.metric("genred_batches_total"), d.metric("genred_chunks_total")
            r["mean_batch"] = (c1 - c0) / (b1 - b0) if b1 > b0 else float("nan")
            r["cpu_ms_per_clip"] = (d.cpu_seconds() - cpu0) * 1e3 / max(1, r["ok"])
            out[f"batch{mb}"] = r
            rows.append([mb, f"{r['mean_batch']:.1f}", f"{r['songs_per_s']:.1f}",
                         f1(r["cpu_ms_per_clip"]), f1(r["p50_ms"]), f1(r["p99_ms"])])
        finally:
            d.stop()
    table(["max_batch (16 clients, 3.5 s clips = 1 chunk each)", "mean chunks per batch",
           "clips/s", "daemon CPU ms per clip", "p50 ms", "p99 ms"], rows)
    results["load"] = out


def bench_memory(args, big):
    say("## 5. Memory: 16 concurrent 10 MB uploads")
    say()
    body = big.read_bytes()
    cases = [("defaults (max_upload_memory 256M, max_active_requests = 2 x cores, "
              "max_batch 8)", [], None),
             ("max_upload_memory 128M (uploads past it: 503)",
              ["--max-upload-memory", "128M"], None),
             ("no classification limit (max_active_requests 65536)",
              ["--max-active-requests", 65536], None),
             ("max_batch 32", ["--max-batch", 32], None),
             ("defaults, glibc MALLOC_ARENA_MAX=2", [], {"MALLOC_ARENA_MAX": "2"})]
    if args.quick:
        cases = cases[:1]
    rows, out = [], {}
    for label, flags, extra in cases:
        env = dict(os.environ, **extra) if extra else None
        d = Daemon(args.genred, "--queue-capacity", 1000, "--max-connections", 64, *flags,
                   env=env)
        try:
            idle = d.status("VmRSS")
            r = load_run(d.port, body, 16, 16)
            peak = d.status("VmHWM")
        finally:
            d.stop()
        out[label] = {"idle_rss_kb": idle, "peak_rss_kb": peak, "run": r}
        rows.append([label, f1(idle / 1024), f1(peak / 1024), r["ok"],
                     f1(16 / r["songs_per_s"]) if r["songs_per_s"] else "-"])
    table(["16 x %.1f MB MP3 uploads at once" % (len(body) / 1e6), "RSS at start, MB",
           "peak RSS (VmHWM), MB", "answered", "seconds for all"], rows)
    say("Target: <= 200 MB with the defaults. Each upload is a 7-minute song (129 chunks "
        "after the trim).")
    say()
    results["memory"] = out


def bench_coldstart(args):
    say("## 6. Cold start: process start to /readyz = 200")
    say()
    reps = 5 if args.quick else 11
    cache = OUT / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    env = dict(os.environ, XDG_CACHE_HOME=str(cache))
    env.pop("CACHE_DIRECTORY", None)
    Daemon(args.genred, env=env).stop()  # learns and saves the wisdom after ready
    wisdom = cache / "genred" / "fftw-wisdom"
    rows, out = [], {}
    cases = [("wisdom in the cache (every start after the first)", env, []),
             ("no wisdom (/dev/null: estimated plan)", env, ["--fftw-wisdom", "/dev/null"])]
    for label, e, flags in cases:
        times, cpus = [], []
        for _ in range(reps):
            t0 = time.perf_counter()
            d = Daemon(args.genred, *flags, env=e)
            while True:
                try:
                    if get(d.port, "/readyz", timeout=5)[0] == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.0005)
            times.append((time.perf_counter() - t0) * 1e3)
            cpus.append(d.cpu_seconds() * 1e3)
            d.stop()
        out[label] = {"wall_ms": med(times), "min_ms": min(times), "cpu_ms": med(cpus)}
        rows.append([label, f1(med(times)), f1(min(times)), f"{med(cpus):.0f}"])
    table(["start", "median ms", "min ms", "CPU ms until ready"], rows)
    say(f"Wisdom file present: {wisdom.exists()}. Target: <= 100 ms. The daemon prints its "
        "port once it listens; /readyz is polled every 0.5 ms from there. CPU ms: the "
        "daemon's utime + stime at that moment (10 ms ticks); wall time beyond it is "
        "waiting for a core on a loaded machine.")
    say()
    results["coldstart"] = out


def backbone_model():
    """The backbone converted from ../shared's checkpoint, or None."""
    if not BACKBONE_CHECKPOINT.is_file():
        return None
    out = OUT / "models"
    subprocess.run([sys.executable, ROOT / "scripts" / "get-model", "efficientat-mn04",
                    "--from", BACKBONE_CHECKPOINT, "--out", out], check=True,
                   capture_output=True)
    return out / "efficientat-mn04-genres.gmodel"


def bench_backbone(args, song):
    say("## 7. The pretrained backbone (EfficientAT mn04) in the C engine")
    say()
    model = backbone_model()
    if model is None:
        say(f"Skipped: {BACKBONE_CHECKPOINT} is missing.")
        say()
        return
    reps = 5 if args.quick else 11
    out = {}

    # End to end, interleaved: the floor, the backbone, the bundled CNN.
    body = song.read_bytes()
    daemons = {"backbone": Daemon(args.genred, model=model), "cnn": Daemon(args.genred)}
    rows = {"ffmpeg": [], "backbone": [], "cnn": []}
    cpu = {"backbone": [], "cnn": []}
    try:
        for d in daemons.values():
            post(d.port, body)  # warm
        for _ in range(reps):
            rows["ffmpeg"].append(timed_child(["ffmpeg", "-nostdin", "-v", "error", "-i", song,
                                               "-f", "null", "-"])[0] * 1e3)
            for name, d in daemons.items():
                c0, t0 = d.cpu_seconds(), time.perf_counter()
                status, _ = post(d.port, body)
                assert status == 200, status
                rows[name].append((time.perf_counter() - t0) * 1e3)
                cpu[name].append((d.cpu_seconds() - c0) * 1e3)
    finally:
        for d in daemons.values():
            d.stop()
    floor = med(rows["ffmpeg"])
    out["e2e"] = {k: {"wall_ms": med(v), "best_ms": min(v)} for k, v in rows.items()}
    for k in cpu:
        out["e2e"][k]["cpu_ms"] = med(cpu[k])
    table(["one 3-minute MP3", "wall ms", "x floor", "best ms", "daemon CPU ms"], [
        ["`ffmpeg -i song.mp3 -f null -` (floor)", f1(floor), "1.00", f1(min(rows["ffmpeg"])), "-"],
        ["genred + backbone, warm daemon", f1(med(rows["backbone"])),
         f"{med(rows['backbone']) / floor:.2f}", f1(min(rows["backbone"])),
         f1(med(cpu["backbone"]))],
        ["genred + bundled CNN, warm daemon", f1(med(rows["cnn"])),
         f"{med(rows['cnn']) / floor:.2f}", f1(min(rows["cnn"])), f1(med(cpu["cnn"]))],
    ])
    say(f"Medians of {reps} interleaved runs. Target: backbone <= 1.0 x the floor.")
    say()

    # The same chunks in C and in PyTorch, on one thread and on every core.
    feats = OUT / "backbone-chunks.npy"
    subprocess.run([args.genred, "features", "--model", model, song, "-o", feats],
                   check=True, capture_output=True)
    cores = os.cpu_count()
    torch_runs, c_runs = {}, []
    for _ in range(2):  # alternated, so both see the same background
        for th in sorted({1, cores}):
            # Debian's torch multiplies matrices with OpenBLAS, whose own
            # thread pool torch.set_num_threads() does not limit.
            env = dict(os.environ, OPENBLAS_NUM_THREADS=str(th), OMP_NUM_THREADS=str(th))
            r = subprocess.run(["/usr/bin/python3", ROOT / "bench" / "torch_backbone.py",
                                BACKBONE_CHECKPOINT, song, feats, str(reps), str(th)],
                               check=True, capture_output=True, text=True, env=env)
            torch_runs.setdefault(th, []).append(json.loads(r.stdout))
        r = subprocess.run([args.bench, "stages", model, song, "44100", str(reps)], cwd=ROOT,
                           check=True, capture_output=True, text=True)
        c_runs.append(json.loads(r.stdout))
    t1 = med([x["inference_batched_ms"] for x in torch_runs[1]])
    t1c = med([x["inference_batched_cpu_ms"] for x in torch_runs[1]])
    c1c = med([x["inference_1t_ms_cpu"] for x in c_runs])
    tn = med([x["inference_batched_ms"] for x in torch_runs[cores]])
    tn_once = med([x["inference_at_once_ms"] for x in torch_runs[cores]])
    c1 = med([x["inference_1t_ms"] for x in c_runs])
    cn = med([x["inference_ms"] for x in c_runs])
    tp = med([x["pipeline_ms"] for x in torch_runs[cores]])
    ce = med([x["classify_ms"] for x in c_runs])
    n = c_runs[-1]["chunks"]
    out["vs_torch"] = {"torch_1t_ms": t1, "torch_1t_cpu_ms": t1c, "c_1t_cpu_ms": c1c,
                       "torch_all_ms": tn, "torch_all_at_once_ms": tn_once,
                       "c_1t_ms": c1, "c_all_ms": cn, "torch_pipeline_ms": tp,
                       "c_classify_ms": ce, "chunks": n, "cores": cores}
    table([f"{n} chunks of the song, wall ms", "PyTorch", "genred (C)", "genred faster by"], [
        ["inference, 1 thread, batches of 8", f1(t1), f1(c1), f"{t1 / c1:.1f} x"],
        ["the same, CPU ms", f1(t1c), f1(c1c), f"{t1c / c1c:.1f} x"],
        [f"inference, {cores} threads (torch intra-op; genred's batcher), batches of 8",
         f1(tn), f1(cn), f"{tn / cn:.1f} x"],
        [f"inference, {cores} threads, torch on all chunks at once", f1(tn_once), f1(cn),
         f"{tn_once / cn:.1f} x"],
        [f"whole pipeline (decode, resample, trim, front end, network), {cores} threads",
         f1(tp), f1(ce), f"{tp / ce:.1f} x"],
    ])
    say(f"torch {torch_runs[1][-1]['torch']}, our definition (train/efficientat.py) with the "
        "checkpoint's weights, on the chunks genred computed. genred's pipeline row is "
        "engine_classify in process. Target: >= 3 x on the same cores.")
    say()

    # Each layer's cost.
    r = subprocess.run([args.bench, "layers", model, song, "8", str(20 if args.quick else 60)],
                       cwd=ROOT, check=True, capture_output=True, text=True)
    lay = json.loads(r.stdout)
    out["layers"] = lay
    kinds = {}
    for o in lay["ops"]:
        w = o["op"].split()
        k = w[0] + (" " + w[1] if w[0] in ("conv2d", "depthwise") else "")
        kinds.setdefault(k, [0.0, 0])
        kinds[k][0] += o["ms_per_chunk"]
        kinds[k][1] += 1
    table(["op (one thread, batches of 8)", "count", "ms per chunk", "share"],
          [[k, v[1], f"{v[0]:.3f}", f"{v[0] / lay['ms_per_chunk']:.2f}"]
           for k, v in sorted(kinds.items(), key=lambda kv: -kv[1][0])])
    say(f"{lay['mflops_per_chunk']:.1f} MFLOPs per chunk in {lay['ms_per_chunk']:.2f} ms: "
        f"{lay['mflops_per_chunk'] / lay['ms_per_chunk']:.1f} GFLOP/s on one core. Costliest "
        "ops: " + "; ".join(f"{o['op']} {o['ms_per_chunk']:.3f} ms" for o in
                            sorted(lay["ops"], key=lambda o: -o["ms_per_chunk"])[:5]) + ".")
    say()
    results["backbone"] = out
def run_child(cmd, **kw):
    """Wall s, CPU s (user + sys) and peak RSS (MiB) of one child; its
    stdout is returned too."""
    t0 = time.perf_counter()
    p = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, **kw)
    out = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024, p.returncode, out


def tops_of(path):
    return {x["file"]: x.get("top") for x in map(json.loads, Path(path).read_text().splitlines())}


def bench_catalogue(args):
    """Songs per second per core over a folder of generated songs."""
    say("## 7. Catalogues: songs per second per core")
    say()
    n = 60 if args.quick else 300
    folder = OUT / "catalogue"
    subprocess.run([ROOT / "bench" / "make-catalogue", folder, "--songs", str(n)], check=True,
                   stdout=subprocess.DEVNULL)
    songs = sorted(folder.glob("song-*.mp3"))[:n]
    listing = OUT / "catalogue.list"
    listing.write_text("".join(f"{p}\n" for p in songs))
    cores = os.cpu_count()
    work = OUT / "catalogue-runs"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    genred = [args.genred, "classify", "--config", ROOT / "conf" / "genred.conf",
              "--model", MODEL, "--files-from", listing]

    def local(label, *flags):
        out = work / f"{label}.jsonl"
        wall, cpu, rss, rc, _ = run_child([*genred, *flags, "--output", out], cwd=ROOT,
                                          env=genred_env())
        assert rc == 0, f"{label}: genred classify exited {rc}"
        return {"wall_s": wall, "cpu_s": cpu, "peak_rss_mib": rss, "out": out}

    def remote(label, jobs):
        d = Daemon(args.genred)
        try:
            out = work / f"{label}.jsonl"
            cpu0 = d.cpu_seconds()
            wall, client_cpu, _, rc, _ = run_child(
                ["/usr/bin/python3", ROOT / "scripts" / "classify-remote", "--url",
                 f"http://127.0.0.1:{d.port}", "--jobs", jobs, "--files-from", listing,
                 "--output", out], env=genred_env())
            cpu = d.cpu_seconds() - cpu0
            rss = d.status("VmHWM") / 1024
        finally:
            d.stop()
        assert rc == 0, f"{label}: classify-remote exited {rc}"
        return {"wall_s": wall, "cpu_s": cpu, "client_cpu_s": client_cpu, "peak_rss_mib": rss,
                "out": out}

    modes = [("sequential", "one song at a time: `genred classify --jobs 1`",
              lambda lb: local(lb, "--jobs", 1)),
             ("catalogue", f"catalogue mode: `genred classify` (--jobs {cores + 1}, the default)",
              lambda lb: local(lb)),
             ("daemon", f"a warm daemon under load: `classify-remote --jobs {2 * cores}`",
              lambda lb: remote(lb, 2 * cores)),
             ("catalogue-max8", "catalogue mode with `--max-chunks 8`",
              lambda lb: local(lb, "--max-chunks", 8))]
    reps = 1 if args.quick else 2
    runs = {key: [] for key, _, _ in modes}
    order = [m for r in range(reps) for m in (modes if r % 2 == 0 else modes[::-1])]
    loads = []
    for key, _, fn in order:
        loads.append(os.getloadavg()[0])
        r = fn(f"{key}-{len(runs[key])}")
        runs[key].append(r)
        print(f"  {key}: {n / r['wall_s']:.2f} songs/s ({r['cpu_s'] / n * 1e3:.0f} CPU ms/song)",
              flush=True)
    full = tops_of(runs["catalogue"][0]["out"])
    rows, out = [], {}
    for key, label, _ in modes:
        rs = runs[key]
        rate = [n / r["wall_s"] for r in rs]
        cpu_ms = [r["cpu_s"] / n * 1e3 for r in rs]
        busy = [r["cpu_s"] / r["wall_s"] / cores for r in rs]
        same = tops_of(rs[0]["out"])
        agree = sum(same[f] == full[f] for f in full) / len(full)
        out[key] = {"songs_per_s": rate, "cpu_ms_per_song": cpu_ms, "cores_busy": busy,
                    "peak_rss_mib": [r["peak_rss_mib"] for r in rs],
                    "client_cpu_ms_per_song": [r.get("client_cpu_s", 0) / n * 1e3 for r in rs],
                    "top_agrees_with_full": agree}
        rows.append([label, " / ".join(f"{x:.2f}" for x in rate),
                     " / ".join(f"{x / cores:.2f}" for x in rate),
                     " / ".join(f"{x:.0f}" for x in cpu_ms),
                     " / ".join(f"{x:.0%}" for x in busy),
                     f"{max(r['peak_rss_mib'] for r in rs):.0f}", f"{agree:.1%}"])
    table([f"{n} songs of 3 minutes, {cores} cores", "songs/s", "songs/s per core",
           "genred CPU ms per song", "cores busy (genred CPU / wall)", "peak RSS MiB",
           "same top as all chunks"], rows)
    d = out["daemon"]
    out["load_avg_at_run_starts"] = loads
    say(f"Load average (1 min) at the start of each run: {min(loads):.1f} to {max(loads):.1f}. "
        f"Runs in the order A B C D D C B A; each cell gives both. songs/s per core = songs/s "
        f"/ {cores}. The daemon's CPU is its own (/proc); classify-remote, on the same cores, "
        f"took {med(d['client_cpu_ms_per_song']):.0f} ms of CPU per song more (reading the file "
        "and posting it). Peak RSS: the genred process (VmHWM / ru_maxrss).")
    say()

    # Songs in flight, on the first 60 songs: what the default is chosen from.
    sub = OUT / "catalogue-60.list"
    sub.write_text("".join(f"{p}\n" for p in songs[:60]))
    rows, sweep = [], {}
    for jobs in (1, 2, 3, 4, 6):
        rs = []
        for _ in range(reps):
            outp = work / f"jobs{jobs}-{len(rs)}.jsonl"
            wall, cpu, _, rc, _ = run_child([args.genred, "classify", "--config",
                                             ROOT / "conf" / "genred.conf", "--model", MODEL,
                                             "--files-from", sub, "--jobs", jobs, "-o", outp],
                                            cwd=ROOT, env=genred_env())
            assert rc == 0
            rs.append((60 / wall, cpu / 60 * 1e3))
        sweep[jobs] = rs
        rows.append([jobs, " / ".join(f"{a:.2f}" for a, _ in rs),
                     " / ".join(f"{b:.0f}" for _, b in rs)])
    table(["--jobs (60 songs)", "songs/s", "CPU ms per song"], rows)
    out["jobs_sweep"] = sweep

    # max_chunks: speed, and how often the top genre is the full analysis'.
    rows, curve = [], {}
    for keep in (1, 2, 4, 8, 16, 0):
        r = local(f"max{keep}", "--max-chunks", keep)
        got = tops_of(r["out"])
        agree = sum(got[f] == full[f] for f in full) / len(full)
        curve[keep] = {"songs_per_s": n / r["wall_s"], "cpu_ms_per_song": r["cpu_s"] / n * 1e3,
                       "top_agrees_with_full": agree}
        rows.append([keep or "0 (all 50)", f"{n / r['wall_s']:.2f}", f"{n / r['wall_s'] / cores:.2f}",
                     f"{r['cpu_s'] / n * 1e3:.0f}", f"{agree:.1%}"])
    table(["max_chunks", "songs/s", "songs/s per core", "CPU ms per song",
           f"same top as all chunks ({n} songs)"], rows)
    say("Agreement is with the catalogue-mode run of all 50 chunks, on the bundled model; "
        "accuracy against max_chunks on held-out tracks is train/max_chunks.py's.")
    say()
    out["max_chunks"] = curve
    for v in out.values():
        if isinstance(v, dict):
            v.pop("out", None)
    results["catalogue"] = out


def machine():
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    load = os.getloadavg()
    return (f"{cpu}, {os.cpu_count()} cores, "
            f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB; "
            f"load average at start {load[0]:.1f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", required=True, help="meson build directory (bench/run makes it)")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--only", default="e2e,torch,stages,load,memory,coldstart,backbone")
    args = ap.parse_args()
    build = Path(args.build)
    args.genred = str(build / "genred")
    args.bench = str(build / "bench" / "genred-bench")
    only = set(args.only.split(","))
    OUT.mkdir(parents=True, exist_ok=True)
    song, clip, big = make_inputs()
    say(f"# genred benchmarks, {time.strftime('%Y-%m-%d %H:%M')}")
    say()
    say(f"Machine: {machine()}. Model: {MODEL.name}.")
    say()
    if "e2e" in only:
        bench_e2e(args, song)
    if "torch" in only:
        bench_torch(args, song)
    if "stages" in only:
        bench_stages(args, song)
    if "load" in only:
        bench_load(args, song, clip)
    if "memory" in only:
        bench_memory(args, big)
    if "coldstart" in only:
        bench_coldstart(args)
    if "backbone" in only:
        bench_backbone(args, song)
    if "catalogue" in only:
        bench_catalogue(args)
    results["machine"] = machine()
    (OUT / "results.json").write_text(json.dumps(results, indent=1))
    (OUT / "results.md").write_text("\n".join(report) + "\n")
    print(f"written: {OUT / 'results.md'}, {OUT / 'results.json'}")


if __name__ == "__main__":
    main()
