"""augment.py - the audio the student learns from, beyond the tracks
themselves, and its two views: the student's log-mel chunks and the
teacher's backbone values, both computed by genred on the same rendered
audio and cached together.

A source is a dict that says how to make its audio (its JSON is its cache
key):
  {"kind": "track", "track": ID, "fx": FX}     one training track, re-recorded
  {"kind": "mix", "a": ID, "b": ID, "weight": W, "offset": S, "fx": FX}
      two tracks summed (b delayed by S seconds and wrapped around, b's share
      W of the amplitude, the sum's peak kept at a's): a new piece of music
      that no label describes but the teacher can;
  {"kind": "file", "path": P, "start": S, "seconds": D, "fx": FX}
      D seconds of unlabelled music (music.py) from S on
FX is a list of re-recording steps, applied in order by one ffmpeg run:
gain (dB), an equaliser (bass and treble shelves, one peaking band), a pitch
shift (semitones) or a tempo change (ratio) by rubberband, and an MP3 round
trip at some bit rate. random_fx() draws them; plan() draws a whole set of
sources with a fixed seed.

What it does not do: train (distill.py), run the teacher's head (teacher.py).
"""
import hashlib
import json
import os
import random
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import dataset

SR = 16000            # the audio is rendered at the student's rate; genred
                      # resamples it to the teacher's 32 kHz as the daemon would


def random_fx(rng, pitch_tempo=0.3, mp3=0.3):
    """Re-recording steps drawn from rng (random.Random)."""
    fx = [["gain", round(rng.uniform(-12, 6), 1)],
          ["eq", round(rng.uniform(-9, 9), 1), round(rng.uniform(-9, 9), 1),
           int(round(200 * 2 ** rng.uniform(0, 5))), round(rng.uniform(-9, 9), 1)]]
    u = rng.random()
    if u < pitch_tempo / 2:
        fx.append(["pitch", round(rng.choice([-2, -1, 1, 2]) * rng.uniform(0.5, 1), 2)])
    elif u < pitch_tempo:
        fx.append(["tempo", round(rng.uniform(0.88, 1.12), 3)])
    if rng.random() < mp3:
        fx.append(["mp3", rng.choice([64, 96, 128, 192])])
    return fx


def _filters(fx):
    """ffmpeg -af chain and output codec arguments of fx."""
    af, codec = [], ["-c:a", "pcm_s16le", "-f", "wav"]
    for step in fx:
        if step[0] == "gain":
            af.append(f"volume={step[1]}dB")
        elif step[0] == "eq":
            _, bass, treble, f, g = step
            af += [f"bass=g={bass}", f"treble=g={treble}", f"equalizer=f={f}:t=o:w=1:g={g}"]
        elif step[0] == "pitch":
            af.append(f"rubberband=pitch={2 ** (step[1] / 12):.5f}")
        elif step[0] == "tempo":
            af.append(f"rubberband=tempo={step[1]}")
        elif step[0] == "mp3":
            codec = ["-c:a", "libmp3lame", "-b:a", f"{step[1]}k", "-f", "mp3"]
        else:
            raise ValueError(f"unknown effect {step!r}")
    return (["-af", ",".join(af)] if af else []), codec


def decode(path):
    """Mono float32 at SR (ffmpeg)."""
    r = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", path, "-ac", "1",
                        "-ar", str(SR), "-f", "f32le", "-"], capture_output=True)
    if r.returncode != 0:
        raise RuntimeError(f"ffmpeg failed on {path}: {r.stderr.decode().strip()}")
    return np.frombuffer(r.stdout, dtype=np.float32)


def render(source, tracks_by_id, tmpdir):
    """Makes source's audio in tmpdir; returns its path."""
    af, codec = _filters(source.get("fx", []))
    dst = os.path.join(tmpdir, "audio." + ("mp3" if "libmp3lame" in codec else "wav"))
    kind = source["kind"]
    if kind in ("track", "file"):
        src = tracks_by_id[source["track"]].path if kind == "track" else source["path"]
        if not af and "libmp3lame" not in codec and kind == "track":
            return src
        span = (["-ss", str(source["start"]), "-t", str(source["seconds"])]
                if "seconds" in source else [])
        cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", *span, "-i", src, "-ac", "1",
               "-ar", str(SR), *af, *codec, dst]
        stdin = None
    elif kind == "mix":
        a = decode(tracks_by_id[source["a"]].path)
        b = decode(tracks_by_id[source["b"]].path)
        n = min(len(a), len(b))
        b = np.roll(b[:n], int(source["offset"] * SR))
        peak = float(np.abs(a[:n]).max()) or 1.0
        w = source["weight"]
        m = (1 - w) * a[:n] / peak + w * b / (float(np.abs(b).max()) or 1.0)
        m = (m * peak / (float(np.abs(m).max()) or 1.0)).astype(np.float32)
        cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "f32le", "-ar", str(SR),
               "-ac", "1", "-i", "-", *af, *codec, dst]
        stdin = m.tobytes()
    else:
        raise ValueError(f"unknown source kind {kind!r}")
    r = subprocess.run(cmd, input=stdin, capture_output=True)
    if r.returncode != 0:
        raise RuntimeError(f"ffmpeg failed rendering {source}: {r.stderr.decode().strip()}")
    return dst


def source_id(source):
    return hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()[:16]


def extract(sources, tracks_by_id, genred, params, teacher, cache, chunk_hop, jobs=2,
            log=None):
    """For every source: (student chunks [n, 128, 128] float16, teacher
    values [n, 911] float32), rendered and computed once and cached under
    cache/sources/<student key>-<teacher key>/hop<S>/. Returns a list in the
    order of sources and how many of them were rendered now (not cached)."""
    d = os.path.join(cache, "sources", f"{dataset.features_key(genred, params)}-{teacher.key}",
                     f"hop{chunk_hop:g}")
    os.makedirs(d, exist_ok=True)
    paths = [os.path.join(d, source_id(s) + ".npz") for s in sources]
    todo = [i for i, p in enumerate(paths) if not os.path.exists(p)]
    done = [0]

    def one(i):
        with tempfile.TemporaryDirectory(prefix="genred-distill-") as tmp:
            audio = render(sources[i], tracks_by_id, tmp)
            xs = os.path.join(tmp, "x.npy")
            cmd = [genred, "features", "--params", params, "--chunk-hop", f"{chunk_hop:g}",
                   *dataset.FEATURE_ARGS, audio, "-o", xs]
            r = subprocess.run(cmd, capture_output=True, text=True, env=dataset.genred_env())
            if r.returncode != 0:
                raise RuntimeError(f"genred features failed on {sources[i]}: {r.stderr.strip()}")
            ts = os.path.join(tmp, "t.npy")
            teacher.run(audio, ts, chunk_hop)
            x, t = np.load(xs), np.load(ts)
            if abs(len(x) - len(t)) > 1:
                raise RuntimeError(f"{sources[i]}: {len(x)} student chunks, {len(t)} teacher's")
            n = min(len(x), len(t))   # resampling may leave a last partial chunk to one side
            np.savez(os.path.join(tmp, "s.npz"), x=x[:n].astype(np.float16),
                     t=t[:n].astype(np.float32), source=json.dumps(sources[i], sort_keys=True))
            os.replace(os.path.join(tmp, "s.npz"), paths[i])
        done[0] += 1
        if log and done[0] % 200 == 0:
            log(f"sources: {done[0]}/{len(todo)} rendered")

    if todo:
        with ThreadPoolExecutor(max_workers=jobs) as ex:
            list(ex.map(one, todo))
    out = []
    for p in paths:
        with np.load(p) as z:
            out.append((z["x"], z["t"]))
    return out, len(todo)


def plan(tracks, n_fx, n_mixes, seed, files=()):
    """Sources of a set of tracks, drawn with seed: every track as it is and
    as a 128 kbit/s MP3, n_fx random re-recordings of each, n_mixes mixes of
    two tracks of different genres drawn among all tracks, and every
    unlabelled file once with random fx. A run uses the sources whose tracks
    it may learn from (usable()), so one plan, rendered once, serves the
    valid.txt run, every fold and the shipped model."""
    rng = random.Random(seed)
    out = []
    for t in tracks:
        out.append({"kind": "track", "track": t.id, "fx": []})
        out.append({"kind": "track", "track": t.id, "fx": [["mp3", 128]]})
        for _ in range(n_fx):
            out.append({"kind": "track", "track": t.id, "fx": random_fx(rng)})
    for _ in range(n_mixes):
        a = rng.choice(tracks)
        b = rng.choice([t for t in tracks if t.label != a.label])
        out.append({"kind": "mix", "a": a.id, "b": b.id, "weight": round(rng.uniform(0.25, 0.6), 2),
                    "offset": round(rng.uniform(0, 10), 2), "fx": random_fx(rng, mp3=0.2)})
    for f in files:
        # 57 s from 15 s in: past a soundtrack's intro, and under the 60 s
        # from which genred's trim rule would cut another 15 s off each end.
        out.append({"kind": "file", "path": f, "start": 15, "seconds": 57,
                    "fx": random_fx(rng, pitch_tempo=0.0, mp3=0.0)})
    return out


def usable(source, allowed_ids):
    """Whether a run that may learn from the tracks allowed_ids may use source."""
    if source["kind"] == "track":
        return source["track"] in allowed_ids
    if source["kind"] == "mix":
        return source["a"] in allowed_ids and source["b"] in allowed_ids
    return True
