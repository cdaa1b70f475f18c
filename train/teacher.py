"""teacher.py - the pretrained backbone as a teacher for the bundled CNN:
its per-chunk outputs as genred computes them, cached, and the genre heads
that turn them into soft genre targets.

The backbone is EfficientAT mn04 (../shared/models/efficientat-mn04),
converted by scripts/get-model's code (mn04.convert) into a .gmodel that
lives in the cache, never in the repository. genred runs it: `genred
features --model M --values embedding,audioset_logits` gives, per 3-second
chunk, the 384-d embedding and the 527 AudioSet logits, exactly what the
daemon computes (C = PyTorch within 1e-4, tests/test_backbone.py), about 3x
faster than PyTorch. A teacher chunk k covers [k*S, k*S + 3) s of the audio,
as the student's does at the same hop S, so the two align by index.

A genre head is a few layers over those values (the format mn04.convert
takes: "inputs", "layers"). apply_head() runs one in NumPy, so one cached
backbone pass serves every head: the zero-shot head (no labels at all), a
head calibrated on the tracks a run may learn from (fit_calibrated), or the
committed head of models/ (trained on every track: only for the shipped
model). tests/test_distill.py checks apply_head against genred running the
same head.

What it does not do: render augmented audio (augment.py), train the
student (distill.py).
"""
import hashlib
import json
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import dataset  # noqa: E402
import gmodel_file  # noqa: E402
import mn04  # noqa: E402

ROOT = os.path.dirname(HERE)
CHECKPOINT = os.path.normpath(os.path.join(ROOT, "..", "shared", "models", "efficientat-mn04",
                                           mn04.CHECKPOINT["file"]))
HEAD_FILE = os.path.join(ROOT, "models", f"{mn04.NAME}-genre-head.json")
VALUES = ("embedding", "audioset_logits")
WIDTHS = {"embedding": mn04.LAST_CHANNELS, "audioset_logits": mn04.N_CLASSES}
GENRES = mn04.GENRES


def fetch_checkpoint(path, cache):
    """path if it is a file; else the published checkpoint, downloaded once
    into cache/teacher/ (scripts/get-model's source; its sha256 is checked
    by Teacher)."""
    if os.path.isfile(path):
        return path
    dst = os.path.join(cache, "teacher", mn04.CHECKPOINT["file"])
    if not os.path.isfile(dst):
        import urllib.request
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        print(f"{path} is missing: downloading {mn04.CHECKPOINT['url']}", file=sys.stderr)
        with urllib.request.urlopen(mn04.CHECKPOINT["url"], timeout=60) as r, \
                open(dst + ".part", "wb") as f:
            for block in iter(lambda: r.read(1 << 16), b""):
                f.write(block)
        os.replace(dst + ".part", dst)
    return dst


class Teacher:
    """The backbone converted for genred, and where its outputs are cached.

    key is a digest of the genred binary and the converted model file: a
    change to either is another teacher and never reuses stale outputs."""

    def __init__(self, genred, checkpoint, cache):
        checkpoint = fetch_checkpoint(checkpoint, cache)
        digest = dataset._file_digest(checkpoint)
        if digest != mn04.CHECKPOINT["sha256"]:
            raise SystemExit(f"{checkpoint}: sha256 {digest} is not the published "
                             f"{mn04.CHECKPOINT['sha256']}")
        self.genred, self.checkpoint = genred, checkpoint
        self.model = os.path.join(cache, "teacher", f"{mn04.NAME}-{digest[:12]}.gmodel")
        if not os.path.exists(self.model):
            os.makedirs(os.path.dirname(self.model), exist_ok=True)
            header, data = mn04.convert(mn04.read_checkpoint(checkpoint))
            tmp = self.model + ".tmp"
            gmodel_file.write(tmp, header, data)
            os.replace(tmp, self.model)
        h = hashlib.sha256()
        for part in (dataset._file_digest(self.model), dataset.features_key(genred, self.model)):
            h.update(part.encode() + b"\0")
        self.key = h.hexdigest()[:12]

    def describe(self):
        return {"backbone": "EfficientAT mn04_as (MobileNetV3 width 0.4, AudioSet, mAP 0.432)",
                "checkpoint": mn04.CHECKPOINT["file"], "sha256": mn04.CHECKPOINT["sha256"],
                "source": mn04.CHECKPOINT["url"], "license": "MIT",
                "run_by": "genred features --values embedding,audioset_logits"}

    def run(self, audio, out, chunk_hop=None):
        """Backbone values of audio's chunks -> out (.npy, [chunks, 911]
        float32: embedding then AudioSet logits)."""
        cmd = [self.genred, "features", "--model", self.model, *dataset.FEATURE_ARGS,
               "--values", ",".join(VALUES), audio, "-o", out]
        if chunk_hop:
            cmd[2:2] = ["--chunk-hop", f"{chunk_hop:g}"]
        r = subprocess.run(cmd, capture_output=True, text=True, env=dataset.genred_env())
        if r.returncode != 0:
            raise RuntimeError(f"genred features (teacher) failed on {audio}: {r.stderr.strip()}")

    def track_values(self, tracks, jobs=2, chunk_hop=None):
        """{track.id: [chunks, 911]} of the original tracks (back-to-back
        chunks by default, the daemon's), cached."""
        from concurrent.futures import ThreadPoolExecutor
        d = os.path.join(os.path.dirname(self.model), self.key, f"orig-hop{chunk_hop or 0:g}")
        os.makedirs(d, exist_ok=True)
        paths = {t.id: os.path.join(d, f"{t.genre}__{t.id}.npy") for t in tracks}

        def one(t):
            if not os.path.exists(paths[t.id]):
                tmp = paths[t.id] + ".tmp.npy"
                self.run(t.path, tmp, chunk_hop)
                os.replace(tmp, paths[t.id])
        with ThreadPoolExecutor(max_workers=jobs) as ex:
            list(ex.map(one, tracks))
        return {t.id: np.load(paths[t.id]) for t in tracks}


# ---- heads ----------------------------------------------------------------

def split_values(v):
    """[N, 911] -> {"embedding": [N, 384], "audioset_logits": [N, 527]}."""
    out, o = {}, 0
    for name in VALUES:
        out[name] = v[:, o:o + WIDTHS[name]]
        o += WIDTHS[name]
    return out


def apply_head(head, values):
    """Genre logits [N, G] (the head's last dense output, before its
    softmax) of backbone values [N, 911], in float64."""
    named = split_values(np.asarray(values, dtype=np.float64))
    x = np.concatenate([named[i] for i in head["inputs"]], axis=1)
    layers = head["layers"]
    if not layers or layers[-1]["type"] != "softmax":
        raise ValueError("head: the last layer must be a softmax")
    for layer in layers[:-1]:
        t = layer["type"]
        if t == "dense":
            x = x @ np.asarray(layer["weight"], dtype=np.float64).T
            if layer.get("bias") is not None:
                x = x + np.asarray(layer["bias"], dtype=np.float64)
        elif t == "relu":
            x = np.maximum(x, 0)
        elif t == "hardswish":
            x = x * np.clip(x + 3, 0, 6) / 6
        elif t == "tanh":
            x = np.tanh(x)
        elif t == "sigmoid":
            x = 1 / (1 + np.exp(-x))
        elif t == "dropout":
            pass
        else:
            raise ValueError(f"head: layer type {t!r} is not supported")
    return x


def softmax(z, temperature=1.0):
    z = np.asarray(z, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def zero_shot_head():
    return mn04.zero_shot_head()


def fit_calibrated(values_by_track, tracks, genres, balance=1.0, l2=1e-3):
    """The zero-shot head with a scale and a bias per genre, fitted by
    cross-entropy on the chunks of tracks (their values_by_track), genres
    weighted n_tracks^-balance and tracks equally within a genre. Convex; L-BFGS,
    a second or two. Returns the head as mn04.convert takes it."""
    import torch
    if list(genres) != GENRES:
        raise ValueError(f"the backbone's genre classes are {GENRES}, the data has {genres}")
    cols = [mn04.GENRE_CLASSES[g] for g in GENRES]
    z, y, w = [], [], []
    labels = np.array([t.label for t in tracks])
    per_genre = np.bincount(labels, minlength=len(genres)).astype(np.float64)
    for t in tracks:
        v = values_by_track[t.id]
        zt = split_values(v)["audioset_logits"][:, cols]
        z.append(zt)
        y += [t.label] * len(zt)
        w += [per_genre[t.label] ** -balance / len(zt)] * len(zt)
    z = torch.tensor(np.concatenate(z), dtype=torch.float64)
    y = torch.tensor(y)
    w = torch.tensor(w, dtype=torch.float64)
    w = w / w.sum()
    scale = torch.ones(len(genres), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(len(genres), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([scale, bias], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logp = torch.log_softmax(z * scale + bias, dim=1)
        loss = -(w * logp[torch.arange(len(y)), y]).sum() \
            + l2 * (((scale - 1) ** 2).sum() + (bias ** 2).sum())
        loss.backward()
        return loss
    opt.step(closure)
    s, b = scale.detach().numpy(), bias.detach().numpy()
    weight = [[float(s[gi]) if j == cols[gi] else 0.0 for j in range(mn04.N_CLASSES)]
              for gi in range(len(genres))]
    return {"inputs": ["audioset_logits"], "genres": GENRES,
            "layers": [{"type": "dense", "out_features": len(genres), "weight": weight,
                        "bias": [float(x) for x in b]}, {"type": "softmax"}],
            "training": {"head": "calibrated: a scale and a bias per genre on the 10 AudioSet "
                                 "genre logits", "tracks": len(tracks)}}


def committed_head():
    """models/efficientat-mn04-genre-head.json (trained on every track by
    train/backbone_head.py), or None."""
    if not os.path.exists(HEAD_FILE):
        return None
    with open(HEAD_FILE) as f:
        return json.load(f)
