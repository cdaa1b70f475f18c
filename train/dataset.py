"""Tracks of a folder-per-genre dataset, split by track, and their genred features.

A dataset is a folder with one sub-folder per genre holding audio files
(flac, wav, mp3, ogg, au). Genres are the sub-folder names, sorted, so any
number and naming of genres works. If the folder has train.txt / valid.txt
(one track id, the file name without extension, per line) those lists define
the split; otherwise tracks are split per genre with a fixed seed. Tracks in
unlisted.txt are left out (known faulty in GTZAN). Cross-validation folds are
stratified by genre and made of whole tracks.

Features always come from `genred features` (the daemon's own C code), with
the daemon's trim rule, so the model learns exactly what the daemon computes:
for a full-length song (60 s or more) that is the window without its first
and last 15 s, for a 30 s excerpt all of it. They are cached as .npy files
keyed by what they depend on: the feature parameters, the genred binary that
computed them (a change to mel.c is another binary, so retraining never
reuses stale features), the arguments it got, the chunk hop and the audio
variant. Variants are
re-recordings of a track made with ffmpeg before genred sees it: an MP3 round
trip, a pitch shift or a tempo change (VARIANTS). Only training data gets
variants and overlapping chunks; evaluation always uses the original audio
cut into back-to-back chunks, as the daemon does.

What it does not do: train, evaluate.
"""
import hashlib
import json
import os
import random
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np

AUDIO_EXT = (".flac", ".wav", ".mp3", ".ogg", ".au")

# name -> ffmpeg arguments that re-record a track (None: the original file).
# rubberband changes pitch without tempo and tempo without pitch.
VARIANTS = {
    "orig": None,
    "mp3": ["-c:a", "libmp3lame", "-b:a", "128k", "-f", "mp3"],
    "pitch-up": ["-af", "rubberband=pitch=1.0595", "-f", "wav"],     # +1 semitone
    "pitch-down": ["-af", "rubberband=pitch=0.9439", "-f", "wav"],   # -1 semitone
    "tempo-up": ["-af", "rubberband=tempo=1.08", "-f", "wav"],
    "tempo-down": ["-af", "rubberband=tempo=0.93", "-f", "wav"],
}


class Track:
    def __init__(self, path, genre, label):
        self.path = path
        self.genre = genre
        self.label = label
        self.id = os.path.splitext(os.path.basename(path))[0]

    def __repr__(self):
        return f"Track({self.id}, {self.genre})"


def _read_list(root, name):
    p = os.path.join(root, name)
    if not os.path.exists(p):
        return None
    with open(p) as f:
        return {line.strip() for line in f if line.strip()}


def discover(root):
    """Returns (genres, tracks) of a folder-per-genre dataset. Track ids must
    be unique across genres: they name cache files and split lists."""
    if not os.path.isdir(root):
        raise SystemExit(f"{root}: not a directory")
    genres = sorted(d for d in os.listdir(root)
                    if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    skip = _read_list(root, "unlisted.txt") or set()
    tracks, seen = [], {}
    for g in genres:
        for name in sorted(os.listdir(os.path.join(root, g))):
            if name.lower().endswith(AUDIO_EXT) and not name.startswith("."):
                t = Track(os.path.join(root, g, name), g, 0)
                if t.id in skip:
                    continue
                if t.id in seen:
                    raise SystemExit(f"{root}: track id {t.id!r} is both {seen[t.id]} and {t.path}")
                seen[t.id] = t.path
                tracks.append(t)
    genres = [g for g in genres if any(t.genre == g for t in tracks)]
    if len(genres) < 2:
        raise SystemExit(f"{root}: need at least two genre folders with audio, found {genres}")
    for t in tracks:
        t.label = genres.index(t.genre)
    return genres, tracks


def split(root, tracks, valid_share=0.3, seed=1234):
    """Splits by track: the dataset's lists if present, else a seeded
    per-genre split. Never puts chunks of one track on both sides."""
    train_ids, valid_ids = _read_list(root, "train.txt"), _read_list(root, "valid.txt")
    if train_ids is not None and valid_ids is not None:
        if train_ids & valid_ids:
            raise SystemExit(f"{root}: tracks in both train.txt and valid.txt: "
                             f"{sorted(train_ids & valid_ids)[:5]}")
        return ([t for t in tracks if t.id in train_ids],
                [t for t in tracks if t.id in valid_ids])
    rng = random.Random(seed)
    train, valid = [], []
    by_genre = {}
    for t in tracks:
        by_genre.setdefault(t.genre, []).append(t)
    for g in sorted(by_genre):
        ts = by_genre[g][:]
        rng.shuffle(ts)
        k = max(1, round(len(ts) * valid_share)) if len(ts) > 1 else 0
        valid += ts[:k]
        train += ts[k:]
    return train, valid


def folds(tracks, k=5, seed=1234):
    """k stratified folds of whole tracks: each genre's tracks are shuffled
    (seeded) and dealt round-robin, continuing where the previous genre
    stopped so fold sizes stay even. Returns k lists of tracks."""
    rng = random.Random(seed)
    out = [[] for _ in range(k)]
    by_genre = {}
    for t in tracks:
        by_genre.setdefault(t.label, []).append(t)
    i = 0
    for g in sorted(by_genre):
        ts = by_genre[g][:]
        rng.shuffle(ts)
        for t in ts:
            out[i % k].append(t)
            i += 1
    return out


def genred_env():
    """The environment for running genred: this one without GENRED_*
    variables. genred reads GENRED_<KEY> as settings (and refuses names that
    are not), so features would otherwise depend on whoever runs training."""
    return {k: v for k, v in os.environ.items() if not k.startswith("GENRED_")}


# What `genred features` is asked besides the files: the daemon's trim rule
# (its default, spelled out), so training sees the window the daemon analyses.
FEATURE_ARGS = ("--trim", "1")

_DIGESTS = {}


def _file_digest(path):
    """sha256 of a file's bytes, computed once per (path, size, mtime)."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def features_key(genred, params_path):
    """The cache folder of features computed by genred (a path, or a name on
    PATH) from params_path: a digest of the parameters, the binary and
    FEATURE_ARGS."""
    binary = genred if os.sep in genred else shutil.which(genred) or genred
    h = hashlib.sha256()
    for part in (_file_digest(params_path), _file_digest(binary), " ".join(FEATURE_ARGS)):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:12]


def cache_dir_for(cache_dir, genred, params_path, variant="orig", chunk_hop=None):
    """Where features of one (genred, params, variant, hop) live. The
    original audio in back-to-back chunks sits at the top of the folder."""
    out = os.path.join(cache_dir, features_key(genred, params_path))
    if variant != "orig" or chunk_hop:
        out = os.path.join(out, f"{variant}-hop{chunk_hop or 0:g}")
    return out


def _render_variant(src, variant, tmpdir):
    """Re-records src with ffmpeg as VARIANTS[variant] says; returns the path."""
    args = VARIANTS[variant]
    dst = os.path.join(tmpdir, "audio." + ("mp3" if "mp3" in args else "wav"))
    r = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", src, "-ac", "1",
                        "-ar", "16000", *args, dst], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"ffmpeg ({variant}) failed on {src}: {r.stderr.strip()}")
    return dst


def extract(genred, params_path, tracks, cache_dir, jobs=2, variant="orig", chunk_hop=None):
    """Runs `genred features` for every track not cached yet, on the track's
    audio or on a VARIANTS re-recording of it, with chunks every chunk_hop
    seconds (None: back to back). Returns {track.id: path of its .npy}
    ([chunks, n_mels, frames], or [chunks, values] for waveform features)."""
    return extract_many(genred, [(params_path, chunk_hop)], tracks, cache_dir, jobs,
                        variant)[0]


def extract_many(genred, targets, tracks, cache_dir, jobs=2, variant="orig"):
    """extract() for several (params_path, chunk_hop) targets of one variant
    at once, re-recording each track only once. Returns one {track.id: path}
    per target."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown audio variant {variant!r}; known: {sorted(VARIANTS)}")
    maps = []
    for params_path, chunk_hop in targets:
        out_dir = cache_dir_for(cache_dir, genred, params_path, variant, chunk_hop)
        os.makedirs(out_dir, exist_ok=True)
        maps.append({t.id: os.path.join(out_dir, f"{t.genre}__{t.id}.npy") for t in tracks})

    def run(t):
        todo = [(target, m[t.id]) for target, m in zip(targets, maps) if not os.path.exists(m[t.id])]
        if not todo:
            return
        with tempfile.TemporaryDirectory(prefix="genred-train-") as tmp:
            src = t.path if VARIANTS[variant] is None else _render_variant(t.path, variant, tmp)
            for (params_path, chunk_hop), dst in todo:
                out = os.path.join(tmp, "features.npy")
                cmd = [genred, "features", "--params", params_path, *FEATURE_ARGS, src, "-o", out]
                if chunk_hop:
                    cmd[2:2] = ["--chunk-hop", f"{chunk_hop:g}"]
                r = subprocess.run(cmd, capture_output=True, text=True, env=genred_env())
                if r.returncode != 0:
                    raise RuntimeError(f"genred features failed on {src} ({t.path}): "
                                       f"{r.stderr.strip()}")
                os.replace(out, dst)

    with ThreadPoolExecutor(max_workers=jobs) as ex:
        list(ex.map(run, tracks))
    return maps


def load_chunks(tracks, paths):
    """Stacks every chunk of the given tracks: X [N, 1, ...] float32 (the
    model's input shape), y [N] labels, owner [N] index of the track each
    chunk came from."""
    xs, ys, owner = [], [], []
    for i, t in enumerate(tracks):
        a = np.load(paths[t.id])
        if a.ndim == 2:                 # waveform envelopes: [chunks, values]
            a = a[:, None, :]
        xs.append(a)
        ys += [t.label] * len(a)
        owner += [i] * len(a)
    if not xs:
        raise ValueError("no tracks to load")
    X = np.concatenate(xs)[:, None].astype(np.float32)
    return X, np.array(ys, dtype=np.int64), np.array(owner, dtype=np.int64)


def load_params(params_path):
    with open(params_path) as f:
        return json.load(f)
