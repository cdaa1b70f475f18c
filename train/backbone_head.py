#!/usr/bin/python3
"""backbone_head.py - the genre head on top of the pretrained EfficientAT mn04
backbone: the experiments that chose it, and the training of the shipped one.

    # the comparison (train/results/backbone-heads.md says what each run is)
    /usr/bin/python3 train/backbone_head.py compare --heads calib_emb --eval valid,cv
    # the shipped head: trained on train.txt + valid.txt
    /usr/bin/python3 train/backbone_head.py train --on all \\
        --out models/efficientat-mn04-genre-head.json

Per-chunk backbone outputs come from one function, backbone_outputs(): the
384-d embedding (mean of features.16's map) and the 527 AudioSet logits of
each 3-second chunk, computed by genred itself (`genred features --values
embedding,audioset_logits`, $GENRED or build/genred); fine-tuning, which needs
the trunk's inner activations, and the torchaudio-resampled variant use the
PyTorch reference (train/efficientat.py), which agrees within 1e-4. Outputs are
cached per track under train/.cache/backbone/<checkpoint sha256>[-genred-<binary
sha256>]/hop<S>/ (git-ignored: they derive from the checkpoint's weights and
never enter the repository).

Chunks as the daemon cuts them (src/features.c, include/genred/mel.h): the
whole 30 s excerpt is analysed (the 15 s trim applies only to long songs);
audio is decoded and resampled to 32 kHz mono float by ffmpeg's
libswresample with its default options, as the daemon's decoder does; the
log-mel is framed over the whole signal (frames centred every 320 samples,
reflect padding at the signal's two ends only), so a chunk's edge frames see
its neighbours' audio; chunk k is frames [k*S*100, k*S*100 + 300) and there
are 1 + (n - 96000) // (S * 32000) of them. Evaluation uses back-to-back
chunks (S = 3), what the daemon answers from; training may use overlapping
ones (S = 1). A track's genre is the argmax of its chunks' mean probability.

Heads (HEADS below) are small layers over the named values `embedding` and
`audioset_logits` that genred's model format can express: concat, dense,
relu/hardswish/tanh/sigmoid, dropout, softmax. Every trained head is exported
as such a layer list (export_layers) and the export is checked to give the
same probabilities as the PyTorch head.

Hyper-parameters are never chosen on the tracks a score is reported on: for
valid.txt by 5-fold CV on train.txt; for the 5-fold CV over train + valid by
a nested 5-fold CV inside each outer training part; for the shipped head by
5-fold CV on all tracks. Folds are stratified by genre and made of whole
tracks (dataset.folds); they are not artist-aware.

What it does not do: convert the backbone (scripts/get-model), define the
network (efficientat.py).
"""
import argparse
import copy
import datetime
import hashlib
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import dataset  # noqa: E402
import efficientat as ea  # noqa: E402

ROOT = os.path.dirname(HERE)
DATA = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "gtzan16k"))
CHECKPOINT = os.path.normpath(os.path.join(ROOT, "..", "shared", "models", "efficientat-mn04",
                                           "mn04_as_mAP_432.pt"))
CACHE = os.path.join(HERE, ".cache", "backbone")
SR = ea.FEATURES["sample_rate"]
HOP = ea.FEATURES["hop_length"]
CHUNK_FRAMES = ea.FEATURES["chunk_frames"]
CHUNK_SAMPLES = CHUNK_FRAMES * HOP          # 96,000: 3 s
EVAL_HOP_S = 3.0                            # back to back, as the daemon
TRUNK_BLOCK = 14                            # fine-tuning starts at features.14


# ---- backbone outputs ------------------------------------------------------

def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def decode_32k(path, resampler="swr"):
    """Mono float32 at 32 kHz. "swr": ffmpeg's libswresample with its
    default options, as src/audio.c uses it (what genred computes).
    "torchaudio": torchaudio's sinc resampler, only to measure how much the
    answers hang on the resampler (see backbone-heads.md)."""
    if resampler == "torchaudio":
        import torchaudio
        w, rate = torchaudio.load(path)
        return torchaudio.functional.resample(w.mean(0), rate, SR).numpy()
    r = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", path, "-ac", "1",
                        "-ar", str(SR), "-f", "f32le", "-"], capture_output=True)
    if r.returncode != 0:
        raise RuntimeError(f"ffmpeg failed on {path}: {r.stderr.decode().strip()}")
    return np.frombuffer(r.stdout, dtype=np.float32).copy()


def chunk_count(n_samples, hop_s):
    step = int(round(hop_s * SR))
    return 0 if n_samples < CHUNK_SAMPLES else 1 + (n_samples - CHUNK_SAMPLES) // step


def logmel_chunks(signal, hop_s):
    """[chunks, 1, 128, 300] log-mel chunks of a whole signal, framed over
    the whole signal (see the header). hop_s must be a whole number of
    frames."""
    step_frames = hop_s * SR / HOP
    if abs(step_frames - round(step_frames)) > 1e-9:
        raise ValueError(f"chunk hop {hop_s} s is not a whole number of {HOP}-sample frames")
    step_frames = int(round(step_frames))
    mel = ea.front_end(torch.from_numpy(signal)[None])[0, 0]       # [128, frames]
    n = chunk_count(len(signal), hop_s)
    return torch.stack([mel[:, k * step_frames:k * step_frames + CHUNK_FRAMES]
                        for k in range(n)])[:, None]


class Reference:
    """The PyTorch reference of the backbone, loaded once."""

    def __init__(self, checkpoint):
        self.net = ea.load_checkpoint(checkpoint)

    @torch.no_grad()
    def run(self, x, batch=32):
        """x [N, 1, 128, 300] -> (embedding [N, 384], logits [N, 527], trunk
        [N, 64, 4, 10]: the input of features.14, for fine-tuning)."""
        embs, logits, trunks = [], [], []
        for i in range(0, len(x), batch):
            h = self.net.features[:TRUNK_BLOCK](x[i:i + batch])
            trunks.append(h)
            fmap = self.net.features[TRUNK_BLOCK:](h)
            logits.append(self.net.classifier(fmap))
            embs.append(fmap.mean(dim=(2, 3)))
        return torch.cat(embs).numpy(), torch.cat(logits).numpy(), torch.cat(trunks).numpy()


def _cache_path(track, hop_s, key, variant):
    return os.path.join(CACHE, key, f"hop{hop_s:g}{variant}", f"{track.genre}__{track.id}.npz")


_NETS, _SHAS = {}, {}     # checkpoint path -> Reference, sha256
GENRED = os.environ.get("GENRED", os.path.join(ROOT, "build", "genred"))


def _genred_model():
    """The backbone as genred runs it (zero-shot head: the outputs read here
    come before any head), converted once into the cache."""
    import gmodel_file
    import mn04
    path = os.path.join(CACHE, "efficientat-mn04-zero-shot.gmodel")
    if not os.path.exists(path):
        os.makedirs(CACHE, exist_ok=True)
        header, data = mn04.convert(mn04.read_checkpoint(CHECKPOINT))
        gmodel_file.write(path, header, data)
    return path


def genred_outputs(path, hop_s):
    """(embedding [chunks, 384], logits [chunks, 527]) of a track as genred
    computes them: its decoder, front end and network (`genred features
    --values embedding,audioset_logits`), the whole excerpt, chunks every
    hop_s seconds."""
    out = os.path.join(CACHE, f"values-{os.getpid()}.npy")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENRED_")}
    r = subprocess.run([GENRED, "features", "--model", _genred_model(), "--trim", "0",
                        "--chunk-hop", f"{hop_s:g}", "--values", "embedding,audioset_logits",
                        path, "-o", out], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"genred features failed on {path}: {r.stderr.strip()}")
    v = np.load(out)
    os.unlink(out)
    return v[:, :ea.LAST_CHANNELS], v[:, ea.LAST_CHANNELS:]


def backbone_outputs(tracks, hop_s, with_trunk=False, resampler="swr", log=None):
    """THE source of per-chunk backbone outputs. Returns one dict per track:
    {"embedding": [chunks, 384], "logits": [chunks, 527]} (+ "trunk"
    [chunks, 64, 4, 10] with with_trunk), for chunks every hop_s seconds as
    described in the header. Computes what is not cached yet with genred
    itself (its decoder, front end and network: what the daemon computes),
    keyed on the checkpoint and the genred binary; the trunk (fine-tuning)
    and the torchaudio-resampled variant with the PyTorch reference."""
    if CHECKPOINT not in _SHAS:
        _SHAS[CHECKPOINT] = sha256_of(CHECKPOINT)
    by_genred = resampler == "swr" and not with_trunk
    if by_genred and GENRED not in _SHAS:
        _SHAS[GENRED] = sha256_of(GENRED)
    key = _SHAS[CHECKPOINT][:16] + (f"-genred-{_SHAS[GENRED][:16]}" if by_genred else "")
    variant = "" if resampler == "swr" else f"-{resampler}"
    out, t0, done = [], time.time(), 0
    for t in tracks:
        path = _cache_path(t, hop_s, key, variant)
        if not os.path.exists(path):
            if by_genred:
                emb, logits = genred_outputs(t.path, hop_s)
                trunk = np.zeros((0,), np.float32)
            else:
                x = logmel_chunks(decode_32k(t.path, resampler), hop_s)
                emb, logits, trunk = _reference().run(x)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = path + ".tmp.npz"
            np.savez(tmp, embedding=emb, logits=logits, trunk=trunk)
            os.replace(tmp, path)
            done += 1
            if log and done % 20 == 0:
                log(f"backbone: {done} tracks computed at hop {hop_s:g} s "
                    f"({time.time() - t0:.0f} s)")
        with np.load(path) as z:
            d = {"embedding": z["embedding"], "logits": z["logits"]}
            if with_trunk:
                d["trunk"] = z["trunk"]
        out.append(d)
    return out


def _reference():
    if CHECKPOINT not in _NETS:
        _NETS[CHECKPOINT] = Reference(CHECKPOINT)
    return _NETS[CHECKPOINT]


class ChunkSet:
    """Every chunk of some tracks: E [N, 384] embeddings, Z [N, 527]
    AudioSet logits, y [N] genre labels, owner [N] track index; T [N, 64, 4,
    10] (the input of features.14) when asked for."""

    def __init__(self, tracks, hop_s=None, with_trunk=False, arrays=None, resampler="swr"):
        if arrays is None:
            outs = backbone_outputs(tracks, hop_s, with_trunk, resampler)
            counts = [len(o["embedding"]) for o in outs]
            arrays = {"E": np.concatenate([o["embedding"] for o in outs]),
                      "Z": np.concatenate([o["logits"] for o in outs]),
                      "owner": np.repeat(np.arange(len(tracks)), counts)}
            if with_trunk:
                arrays["T"] = np.concatenate([o["trunk"] for o in outs])
        self.tracks = list(tracks)
        self.track_labels = np.array([t.label for t in tracks], dtype=np.int64)
        self.E = torch.as_tensor(arrays["E"])
        self.Z = torch.as_tensor(arrays["Z"])
        self.T = torch.as_tensor(arrays["T"]) if "T" in arrays else None
        self.owner = np.asarray(arrays["owner"])
        self.y = torch.from_numpy(self.track_labels[self.owner])

    def __len__(self):
        return len(self.y)

    def subset(self, tracks):
        """The chunks of some of this set's tracks, in the given order."""
        where = {t.id: i for i, t in enumerate(self.tracks)}
        idx = [where[t.id] for t in tracks]
        rows = [np.flatnonzero(self.owner == i) for i in idx]
        sel = torch.from_numpy(np.concatenate(rows))
        arrays = {"E": self.E[sel], "Z": self.Z[sel],
                  "owner": np.repeat(np.arange(len(idx)), [len(r) for r in rows])}
        if self.T is not None:
            arrays["T"] = self.T[sel]
        return ChunkSet(tracks, arrays=arrays)


def chunk_weights(cs, balance, n_genres):
    """Training weight of each chunk, summing to 1: a genre's tracks share
    n_tracks^(1 - balance) (balance 1: every genre weighs the same; 0: every
    track does), and a track's chunks share its weight equally."""
    per_genre = np.bincount(cs.track_labels, minlength=n_genres).astype(np.float64)
    track_w = per_genre[cs.track_labels] ** -balance
    per_track = np.bincount(cs.owner, minlength=len(cs.tracks))
    w = track_w[cs.owner] / per_track[cs.owner]
    return torch.from_numpy(w / w.sum()).float()


def id_runs(tracks, data=DATA):
    """Groups of tracks that probably share an artist: runs of consecutive
    GTZAN ids within one genre and one list (train.txt / valid.txt). GTZAN
    orders each genre's excerpts largely by artist, and the artist-filtered
    lists keep an artist on one side, so a gap in the ids or a change of
    list is where an artist can change. A proxy only: a run may hold several
    artists, and an artist's tracks may lie in two runs."""
    lists = {}
    for name in ("train.txt", "valid.txt"):
        for i in dataset._read_list(data, name) or ():
            lists[i] = name
    key = sorted(tracks, key=lambda t: (t.genre, int(t.id.split(".")[-1])))
    runs, prev = [], None
    for t in key:
        n = int(t.id.split(".")[-1])
        if prev and prev.genre == t.genre and int(prev.id.split(".")[-1]) == n - 1 \
                and lists.get(prev.id) == lists.get(t.id):
            runs[-1].append(t)
        else:
            runs.append([t])
        prev = t
    return runs


def grouped_folds(tracks, k=5):
    """k folds of whole id runs (id_runs): each genre's runs, largest first,
    go to the fold with the fewest tracks so far (ties: the fewest of that
    genre, then the lowest index). Deterministic; fold sizes are uneven
    where one run is large."""
    out = [[] for _ in range(k)]
    by_genre = {}
    for run in id_runs(tracks):
        by_genre.setdefault(run[0].genre, []).append(run)
    for g in sorted(by_genre):
        per_fold = [0] * k
        for run in sorted(by_genre[g], key=lambda r: -len(r)):
            i = min(range(k), key=lambda f: (len(out[f]), per_fold[f], f))
            out[i] += run
            per_fold[i] += len(run)
    return out


FOLDS = {"stratified": lambda tracks, k: dataset.folds(tracks, k, seed=1234),
         "grouped": grouped_folds}


def genre_columns(genres):
    """The AudioSet logit index of each of our genres, in our order."""
    return [ea.GENRE_CLASSES[g] for g in genres]


# ---- scores --------------------------------------------------------------

def track_probs(probs, owner, n_tracks):
    """Mean chunk probability per track."""
    out = np.zeros((n_tracks, probs.shape[1]))
    np.add.at(out, owner, probs)
    return out / np.bincount(owner, minlength=n_tracks)[:, None]


def balanced_accuracy(true, pred, n):
    present = [g for g in range(n) if (true == g).any()]
    return float(np.mean([(pred[true == g] == g).mean() for g in present]))


def balanced_brier(tp, true, mask=None):
    """Mean over genres of the mean Brier score (squared distance of a
    track's mean probabilities to its one-hot genre, 0 to 2) of the genre's
    tracks where mask is true. Bounded, so that no single track decides,
    unlike the log-loss."""
    mask = np.ones(len(true), bool) if mask is None else mask
    b = ((tp - np.eye(tp.shape[1])[true]) ** 2).sum(1)
    return float(np.mean([b[mask & (true == g)].mean() for g in np.unique(true[mask])]))


def scores(probs, cs, genres):
    """The headline numbers of chunk probabilities [N, G] of a ChunkSet of
    back-to-back chunks."""
    n = len(genres)
    tp = track_probs(probs, cs.owner, len(cs.tracks))
    pred = tp.argmax(1)
    true = cs.track_labels
    votes = np.zeros_like(tp)
    np.add.at(votes, (cs.owner, probs.argmax(1)), 1)
    votes_pred = (votes + 1e-3 * tp).argmax(1)
    y = cs.y.numpy()
    p_true = np.clip(tp[np.arange(len(true)), true], 1e-12, 1)
    present = [g for g in range(n) if (true == g).any()]
    return {
        "tracks": int(len(true)),
        "track_correct": int((pred == true).sum()),
        "track_accuracy": float((pred == true).mean()),
        "balanced_accuracy": balanced_accuracy(true, pred, n),
        "chunk_accuracy": float((probs.argmax(1) == y).mean()),
        "track_accuracy_votes": float((votes_pred == true).mean()),
        "balanced_nll": float(np.mean([-np.log(p_true[true == g]).mean() for g in present])),
        "balanced_brier": balanced_brier(tp, true),
        "per_genre_recall": {genres[g]: [int((pred[true == g] == g).sum()), int((true == g).sum())]
                             for g in present},
        "confusion": np.bincount(true * n + pred, minlength=n * n).reshape(n, n).tolist(),
    }


# ---- heads -----------------------------------------------------------------

class Standardize(nn.Module):
    """(x - mean) / std with the training chunks' statistics, folded into
    the next dense layer at export."""

    def __init__(self, x):
        super().__init__()
        self.register_buffer("mean", x.mean(0))
        self.register_buffer("std", x.std(0).clamp_min(1e-6))

    def forward(self, x):
        return (x - self.mean) / self.std


class Head(nn.Module):
    """Genre logits = [calibrated zero-shot: a * z_genre + b]
                    + [dense correction from the standardised inputs]
                    + [MLP from the standardised inputs]
    with any of the three parts present. The correction's and the MLP's
    weights carry an L2 penalty (lam) that pulls them to zero, so with few
    tracks the head falls back on the calibrated zero-shot answer; a and b
    carry a penalty (lam_cal) towards a = 1, b = 0 (zero-shot)."""

    def __init__(self, spec, train_set, genres, hp):
        super().__init__()
        self.spec, self.hp, self.genres = spec, dict(hp), list(genres)
        g = len(genres)
        self.register_buffer("cols", torch.tensor(genre_columns(genres)))
        self.calibrated = spec["calib"] in ("fit", "fixed")
        if self.calibrated:
            self.a = nn.Parameter(torch.ones(g), requires_grad=spec["calib"] == "fit")
            self.b = nn.Parameter(torch.zeros(g), requires_grad=spec["calib"] == "fit")
        self.inputs = spec["inputs"]
        if self.inputs:
            x = self._raw(train_set.E, train_set.Z)
            self.norm = Standardize(x)
            hidden = hp.get("hidden", 0)
            if hidden:
                self.mlp = nn.Sequential(nn.Linear(x.shape[1], hidden), nn.ReLU(),
                                         nn.Dropout(hp.get("dropout", 0.0)),
                                         nn.Linear(hidden, g))
                if self.calibrated:        # start at the calibrated answer
                    nn.init.zeros_(self.mlp[3].weight)
                    nn.init.zeros_(self.mlp[3].bias)
            else:
                self.lin = nn.Linear(x.shape[1], g)
                nn.init.zeros_(self.lin.weight)
                nn.init.zeros_(self.lin.bias)

    def _raw(self, E, Z):
        """The correction's input: the named inputs side by side, the logits
        restricted to spec["logit_subset"] where given."""
        sub = self.spec.get("logit_subset")
        parts = {"embedding": E, "audioset_logits": Z if sub is None else Z[:, sub]}
        return torch.cat([parts[n] for n in self.inputs], 1)

    def _raw_columns(self, offset):
        """Where each column of _raw() lies in the exported input vector."""
        cols = []
        for n in self.inputs:
            if n == "audioset_logits" and self.spec.get("logit_subset") is not None:
                cols += [offset[n] + c for c in self.spec["logit_subset"]]
            else:
                width = ea.LAST_CHANNELS if n == "embedding" else ea.N_CLASSES
                cols += list(range(offset[n], offset[n] + width))
        return cols

    def forward(self, E, Z):
        out = 0
        if self.calibrated:
            out = self.a * Z[:, self.cols] + self.b
        if self.inputs:
            x = self.norm(self._raw(E, Z))
            out = out + (self.mlp(x) if hasattr(self, "mlp") else self.lin(x))
        return out

    def penalty(self):
        lam, lam_cal = self.hp.get("lam", 0.0), self.hp.get("lam_cal", 0.0)
        p = 0.0
        if self.inputs:
            ws = ([self.mlp[0].weight, self.mlp[3].weight] if hasattr(self, "mlp")
                  else [self.lin.weight])
            p = p + 0.5 * lam * sum((w ** 2).sum() for w in ws)
        if self.calibrated and self.spec["calib"] == "fit":
            p = p + 0.5 * lam_cal * (((self.a - 1) ** 2).sum() + (self.b ** 2).sum())
        return p

    @torch.no_grad()
    def probs(self, cs):
        self.eval()
        return torch.softmax(self(cs.E, cs.Z), 1).numpy()

    # -- export: the layer list genred's model format runs
    @torch.no_grad()
    def export_layers(self):
        """(inputs, layers): dense layers over the concatenation of the named
        inputs, standardisation and calibration folded in."""
        g = len(self.genres)
        inputs = list(self.inputs)
        if self.calibrated and "audioset_logits" not in inputs:
            inputs.append("audioset_logits")
        widths = {"embedding": ea.LAST_CHANNELS, "audioset_logits": ea.N_CLASSES}
        n_in = sum(widths[n] for n in inputs)
        offset = {}
        o = 0
        for n in inputs:
            offset[n] = o
            o += widths[n]
        # The correction reads x = (raw - mean) / std, raw being the
        # exported input's columns `where`.
        where = self._raw_columns(offset) if self.inputs else []

        def fold(w, b):      # a dense on x -> the same dense on the input
            w = w.double()
            std, mean = self.norm.std.double(), self.norm.mean.double()
            wide = torch.zeros(w.shape[0], n_in, dtype=torch.float64)
            wide[:, where] = w / std
            return wide, b.double() - w @ (mean / std)

        calib_w = torch.zeros(g, n_in, dtype=torch.float64)
        calib_b = torch.zeros(g, dtype=torch.float64)
        if self.calibrated:
            for i, c in enumerate(self.cols.tolist()):
                calib_w[i, offset["audioset_logits"] + c] = self.a[i].double()
            calib_b = self.b.double()
        layers = []
        if hasattr(self, "mlp"):
            w1, b1 = fold(self.mlp[0].weight, self.mlp[0].bias)
            w2, b2 = self.mlp[3].weight.double(), self.mlp[3].bias.double()
            if self.calibrated:
                # relu(c) - relu(-c) = c carries the calibrated logits
                # through the hidden layer's ReLU exactly.
                w1 = torch.cat([w1, calib_w, -calib_w])
                b1 = torch.cat([b1, calib_b, -calib_b])
                eye = torch.eye(g, dtype=torch.float64)
                w2 = torch.cat([w2, eye, -eye], 1)
            layers += [_dense(w1, b1), {"type": "relu"}, {"type": "dropout"}, _dense(w2, b2)]
        else:
            w, b = calib_w, calib_b
            if hasattr(self, "lin"):
                lw, lb = fold(self.lin.weight, self.lin.bias)
                w, b = w + lw, b + lb
            layers.append(_dense(w, b))
        layers.append({"type": "softmax"})
        return inputs, layers


def _dense(w, b):
    return {"type": "dense", "in_features": int(w.shape[1]), "out_features": int(w.shape[0]),
            "weight": [[float(v) for v in row] for row in w.float().tolist()],
            "bias": [float(v) for v in b.float().tolist()]}


def run_layers(inputs, layers, E, Z):
    """NumPy reference of an exported head, as genred runs it: the named
    inputs concatenated in order, then the layers."""
    parts = {"embedding": E, "audioset_logits": Z}
    x = np.concatenate([np.asarray(parts[n], dtype=np.float64) for n in inputs], 1)
    for layer in layers:
        t = layer["type"]
        if t == "dense":
            x = x @ np.asarray(layer["weight"], dtype=np.float64).T + np.asarray(layer["bias"])
        elif t == "relu":
            x = np.maximum(x, 0)
        elif t == "dropout":
            pass
        elif t == "softmax":
            x = np.exp(x - x.max(1, keepdims=True))
            x /= x.sum(1, keepdims=True)
        else:
            raise ValueError(f"layer type {t!r} not handled here")
    return x


# The L2 grid of the dense heads, from where it barely matters to where the
# correction is nearly zero, on the mean-loss scale (weights of 1 on
# standardised inputs).
LAMS = [1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0]

# AudioSet's "Music genre" branch: Pop music (216) .. Independent music (265).
MUSIC_GENRE_LOGITS = list(range(216, 266))

# name -> (architecture, hyper-parameter grid, fixed hyper-parameters).
# "calib": "fixed" is the zero-shot answer (a = 1, b = 0), "fit" fits a, b.
HEADS = {
    "zeroshot": ({"calib": "fixed", "inputs": []}, {}, {}),
    "calib": ({"calib": "fit", "inputs": []}, {"lam_cal": [1e-4, 1e-3, 1e-2, 1e-1]}, {}),
    "lin_emb": ({"calib": None, "inputs": ["embedding"]}, {"lam": LAMS}, {}),
    "mlp_emb": ({"calib": None, "inputs": ["embedding"]},
                {"lam": [1e-3, 1e-2, 1e-1, 1.0], "hidden": [32, 128]},
                {"dropout": 0.3, "epochs": 40}),
    "calib_emb": ({"calib": "fit", "inputs": ["embedding"]},
                  {"lam": LAMS}, {"lam_cal": 1e-3}),
    "calib_logits": ({"calib": "fit", "inputs": ["audioset_logits"]},
                     {"lam": LAMS}, {"lam_cal": 1e-3}),
    "calib_music": ({"calib": "fit", "inputs": ["audioset_logits"],
                     "logit_subset": MUSIC_GENRE_LOGITS}, {"lam": LAMS}, {"lam_cal": 1e-3}),
    "calib_emb_music": ({"calib": "fit", "inputs": ["embedding", "audioset_logits"],
                         "logit_subset": MUSIC_GENRE_LOGITS}, {"lam": LAMS}, {"lam_cal": 1e-3}),
    "calib_emb_logits": ({"calib": "fit", "inputs": ["embedding", "audioset_logits"]},
                         {"lam": LAMS}, {"lam_cal": 1e-3}),
    "calib_mlp_emb": ({"calib": "fit", "inputs": ["embedding"]},
                      {"lam": [1e-3, 1e-2, 1e-1, 1.0], "hidden": [32, 128]},
                      {"lam_cal": 1e-3, "dropout": 0.3, "epochs": 40}),
    # Ablation: calib with every track weighing the same (no genre balance).
    "calib_unbalanced": ({"calib": "fit", "inputs": []},
                         {"lam_cal": [1e-4, 1e-3, 1e-2, 1e-1]}, {"balance": 0.0}),
    # features.14-16 + classifier + calibrated genre logits, fine-tuned;
    # not committable (see fit_finetune)
    "finetune": ({"finetune": True}, {"lr": [1e-4, 3e-4]},
                 {"epochs": 3, "lam_cal": 1e-3}),
}


def fit_head(name, train_set, genres, hp, seed, init=None):
    """Trains head `name` with hyper-parameters hp on a ChunkSet. Heads
    without a hidden layer are convex: full-batch L-BFGS to convergence
    (no seed involved; init, a state dict of the same head fitted with
    another lam, only saves time); MLPs train with Adam on class-balanced
    draws of chunks for a fixed number of epochs."""
    spec = HEADS[name][0]
    if spec.get("finetune"):
        return fit_finetune(train_set, genres, hp, seed)
    torch.manual_seed(seed)
    head = Head(spec, train_set, genres, hp)
    if init is not None and not hp.get("hidden"):
        head.load_state_dict(init)
    params = [p for p in head.parameters() if p.requires_grad]
    if not params:
        return head
    w = chunk_weights(train_set, hp.get("balance", 1.0), len(genres))
    if not hp.get("hidden"):
        opt = torch.optim.LBFGS(params, lr=1, max_iter=500, tolerance_grad=1e-7,
                                tolerance_change=1e-10, history_size=20,
                                line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            ce = F.cross_entropy(head(train_set.E, train_set.Z), train_set.y, reduction="none")
            loss = (ce * w).sum() + head.penalty()
            loss.backward()
            return loss

        head.train()
        opt.step(closure)
        return head
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(params, lr=hp.get("lr", 1e-3))
    n, batch = len(train_set), 128
    head.train()
    for _ in range(hp["epochs"]):
        idx = torch.multinomial(w, n, replacement=True, generator=gen)
        for i in range(0, n, batch):
            j = idx[i:i + batch]
            opt.zero_grad()
            loss = F.cross_entropy(head(train_set.E[j], train_set.Z[j]), train_set.y[j])
            (loss + head.penalty()).backward()
            opt.step()
    return head


# ---- experiments -------------------------------------------------------------

def hp_grid(name):
    """Every hyper-parameter combination of a head, the strongest penalty
    first (so a convex head can warm-start down the path)."""
    _, grid, fixed = HEADS[name]
    combos = [dict(fixed)]
    for key, values in grid.items():
        values = sorted(values, reverse=key in ("lam", "lam_cal"))
        combos = [dict(c, **{key: v}) for c in combos for v in values]
    return combos


def is_convex(name):
    spec, grid, fixed = HEADS[name]
    return not (spec.get("finetune") or grid.get("hidden") or fixed.get("hidden"))


class Sets:
    """Backbone outputs of every listed track, loaded once: training chunks
    every train_hop_s seconds, evaluation chunks back to back."""

    def __init__(self, tracks, train_hop_s, with_trunk=False):
        self.train = ChunkSet(tracks, train_hop_s, with_trunk)
        self.eval = ChunkSet(tracks, EVAL_HOP_S, with_trunk)


def heldout_probs(name, hps, train_tracks, test_tracks, sets, genres, seed, test_set=None):
    """Chunk probabilities on test_tracks' back-to-back chunks (or on
    test_set's) of head `name` trained on train_tracks, for each hp in hps
    (convex heads warm-start from the previous hp)."""
    tr = sets.train.subset(train_tracks)
    te = test_set.subset(test_tracks) if test_set else sets.eval.subset(test_tracks)
    out, prev = [], None
    for hp in hps:
        head = fit_head(name, tr, genres, hp, seed, init=prev if is_convex(name) else None)
        prev = head.state_dict()
        out.append(head.probs(te))
    return out, te


def select_hp(name, tracks, sets, genres, inner="grouped", k=5, seed=0, log=None):
    """The hyper-parameters with the lowest balanced Brier score in a k-fold
    CV over `tracks`, folds of kind `inner` (FOLDS); held-out predictions
    pooled over the folds. A held-out track whose genre has no track in its
    fold's training part does not count (no head can learn that genre there,
    and the shipped head never meets the case); it would make the choice
    about that instead. Returns (best hp, table of every hp's pooled CV
    scores)."""
    hps = hp_grid(name)
    if len(hps) == 1:
        return hps[0], []
    parts = FOLDS[inner](tracks, k)
    probs = [[] for _ in hps]
    order, learnable = [], []
    for i in range(k):
        train_tracks = [t for j, p in enumerate(parts) if j != i for t in p]
        ps, _ = heldout_probs(name, hps, train_tracks, parts[i], sets, genres, seed)
        for h, p in enumerate(ps):
            probs[h].append(p)
        order += parts[i]
        seen = {t.genre for t in train_tracks}
        learnable += [t.genre in seen for t in parts[i]]
    held = sets.eval.subset(order)
    learnable = np.array(learnable)
    table = []
    for hp, p in zip(hps, probs):
        p = np.concatenate(p)
        s = scores(p, held, genres)
        tp = track_probs(p, held.owner, len(order))
        table.append({"hp": hp, "criterion": balanced_brier(tp, held.track_labels, learnable),
                      **{m: s[m] for m in ("balanced_brier", "balanced_nll", "track_accuracy",
                                           "balanced_accuracy", "chunk_accuracy")}})
    # Ties (within 1e-4) go to the first, i.e. the strongest penalty.
    best = min(range(len(hps)), key=lambda h: round(table[h]["criterion"], 4))
    if log:
        log(f"  {name}: chose {hps[best]} (CV balanced Brier {table[best]['criterion']:.4f} "
            f"over {int(learnable.sum())} of {len(tracks)} tracks)")
    return hps[best], table


HEADLINE = ("track_accuracy", "balanced_accuracy", "chunk_accuracy", "track_accuracy_votes",
            "balanced_nll", "balanced_brier")


def mean_std(rows):
    return {m: [float(np.mean([r[m] for r in rows])), float(np.std([r[m] for r in rows]))]
            for m in HEADLINE}


def seeds_for(name, n_seeds):
    return [0] if is_convex(name) else list(range(n_seeds))


def eval_valid(name, sets, train_tracks, valid_tracks, genres, n_seeds, inner, log,
               selected=None, test_set=None):
    """Hyper-parameters by 5-fold CV on train.txt (or `selected`, the
    (hp, table) of such a choice made before), then trained on all of
    train.txt and scored on valid.txt (test_set: other backbone outputs of
    its tracks), once per seed."""
    t0 = time.time()
    hp, table = selected or select_hp(name, train_tracks, sets, genres, inner, log=log)
    runs = []
    for seed in seeds_for(name, n_seeds):
        (p,), te = heldout_probs(name, [hp], train_tracks, valid_tracks, sets, genres, seed,
                                 test_set)
        runs.append(dict(scores(p, te, genres), seed=seed))
    s = runs[0]
    log(f"  {name} valid: {s['track_correct']}/{s['tracks']} = {s['track_accuracy']:.3f}, "
        f"balanced {s['balanced_accuracy']:.3f}, chunk {s['chunk_accuracy']:.3f} "
        f"(seed {s['seed']}; {len(runs)} seeds)")
    return {"hp": hp, "selection": table, "runs": runs, "summary": mean_std(runs),
            "seconds": round(time.time() - t0, 1)}


def eval_cv(name, sets, tracks, genres, n_seeds, inner, log, outer="stratified", k=5,
            fixed_hp=None):
    """k-fold CV over `tracks`, folds of kind `outer` (FOLDS: "stratified"
    by genre, whole tracks, not artist-aware; or "grouped" by id runs, an
    artist proxy), hyper-parameters chosen by a nested k-fold CV inside each
    outer training part. Scores pool the held-out predictions of the k folds
    (every track predicted once); fold_spread is the std over folds of the
    per-fold track accuracy. fixed_hp, when given, replaces the nested
    choice (fine-tuning: too slow to nest)."""
    t0 = time.time()
    parts = FOLDS[outer](tracks, k)
    seeds = seeds_for(name, n_seeds)
    probs = {s: [] for s in seeds}
    folds, order = [], []
    for i in range(k):
        train_tracks = [t for j, p in enumerate(parts) if j != i for t in p]
        hp = fixed_hp or select_hp(name, train_tracks, sets, genres, inner, log=None)[0]
        fold_acc = []
        for seed in seeds:
            (p,), te = heldout_probs(name, [hp], train_tracks, parts[i], sets, genres, seed)
            probs[seed].append(p)
            fold_acc.append(scores(p, te, genres)["track_accuracy"])
        folds.append({"hp": hp, "tracks": len(parts[i]), "track_accuracy": fold_acc})
        order += parts[i]
        log(f"  {name} {outer} cv fold {i}: hp {hp}, track acc {np.mean(fold_acc):.3f}")
    held = sets.eval.subset(order)
    runs = [dict(scores(np.concatenate(probs[s]), held, genres), seed=s) for s in seeds]
    per_fold = [np.mean(f["track_accuracy"]) for f in folds]
    s = runs[0]
    log(f"  {name} {outer} cv: {s['track_correct']}/{s['tracks']} = {s['track_accuracy']:.3f}, "
        f"balanced {s['balanced_accuracy']:.3f}, chunk {s['chunk_accuracy']:.3f}")
    return {"folds": folds, "runs": runs, "summary": mean_std(runs),
            "fold_spread": float(np.std(per_fold)), "seconds": round(time.time() - t0, 1)}


def log_to_stderr(msg):
    print(msg, file=sys.stderr, flush=True)


def load_data(data=DATA):
    genres, tracks = dataset.discover(data)
    train_tracks, valid_tracks = dataset.split(data, tracks)
    return genres, train_tracks, valid_tracks


def merge_results(path, name, mode, result, meta):
    """Keeps every head's latest result of each mode in one JSON file."""
    doc = {}
    if os.path.exists(path):
        with open(path) as f:
            doc = json.load(f)
    doc.setdefault("heads", {}).setdefault(name, {})[mode] = dict(result, **meta)
    with open(path + ".tmp", "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(path + ".tmp", path)


def stored_selection(path, name, inner):
    """A hyper-parameter choice of `name` kept by an earlier run, made on
    the same grid; None if there is none."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        got = json.load(f).get("heads", {}).get(name, {}).get("selection-inner-" + inner)
    if not got or [r["hp"] for r in got["selection"]] != hp_grid(name):
        return None
    return got["hp"], got["selection"]


def cmd_compare(args):
    genres, train_tracks, valid_tracks = load_data(args.data)
    names = args.heads.split(",")
    for name in names:
        if name not in HEADS:
            raise SystemExit(f"unknown head {name!r}; known: {', '.join(HEADS)}")
    sets = Sets(train_tracks + valid_tracks, args.train_hop,
                with_trunk=any(HEADS[n][0].get("finetune") for n in names))
    for name in names:
        fixed_hp, selected = None, None
        if HEADS[name][0].get("finetune"):
            # One choice, by CV on train.txt, for every evaluation; kept in
            # the results file, as it takes a while.
            selected = stored_selection(args.results, name, args.inner)
            if selected is None:
                t0 = time.time()
                selected = select_hp(name, train_tracks, sets, genres, args.inner, seed=0,
                                     log=log_to_stderr)
                merge_results(args.results, name, "selection-inner-" + args.inner,
                              {"hp": selected[0], "selection": selected[1],
                               "seconds": round(time.time() - t0, 1)}, {})
            fixed_hp = selected[0]
        for mode in args.eval.split(","):
            log_to_stderr(f"{name} / {mode}")
            if mode == "valid":
                r = eval_valid(name, sets, train_tracks, valid_tracks, genres, args.seeds,
                               args.inner, log_to_stderr, selected)
            elif mode == "valid-torchaudio":
                shifted = ChunkSet(valid_tracks, EVAL_HOP_S, with_trunk=sets.eval.T is not None,
                                   resampler="torchaudio")
                r = eval_valid(name, sets, train_tracks, valid_tracks, genres, args.seeds,
                               args.inner, log_to_stderr, selected, test_set=shifted)
            elif mode in ("cv", "gcv"):
                r = eval_cv(name, sets, train_tracks + valid_tracks, genres, args.seeds,
                            args.inner, log_to_stderr,
                            outer="stratified" if mode == "cv" else "grouped",
                            fixed_hp=fixed_hp)
            else:
                raise SystemExit(f"unknown --eval {mode!r}: valid, cv, gcv, "
                                 f"valid-torchaudio")
            if args.inner != "grouped":
                mode += "-inner-" + args.inner
            meta = {"command": " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]),
                    "train_hop_s": args.train_hop, "threads": torch.get_num_threads(),
                    "date": datetime.datetime.now().isoformat(timespec="seconds")}
            merge_results(args.results, name, mode, r, meta)


# ---- fine-tuning (for comparison only) -----------------------------------------
#
# Fine-tuned backbone weights derive from the checkpoint's and could not be
# committed; this measures what fine-tuning would buy, nothing more.

class FineTuned(nn.Module):
    """features.14-16 and the AudioSet classifier, trainable, from the input
    of features.14, with the calibrated genre head (a * z_genre + b) on the
    logits. BatchNorm keeps the checkpoint's statistics; the classifier's
    dropout is on while training."""

    def __init__(self, net, calib, genres):
        super().__init__()
        self.tail = copy.deepcopy(net.features[TRUNK_BLOCK:])
        self.classifier = copy.deepcopy(net.classifier)
        self.register_buffer("cols", torch.tensor(genre_columns(genres)))
        self.a = nn.Parameter(calib.a.detach().clone())
        self.b = nn.Parameter(calib.b.detach().clone())

    def train(self, mode=True):
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self

    def forward(self, T):
        return self.a * self.classifier(self.tail(T))[:, self.cols] + self.b

    @torch.no_grad()
    def probs(self, cs, batch=256):
        self.eval()
        return torch.cat([torch.softmax(self(cs.T[i:i + batch]), 1)
                          for i in range(0, len(cs), batch)]).numpy()


def fit_finetune(train_set, genres, hp, seed):
    """Starts from the calibrated head fitted on the same tracks, then
    trains everything with Adam on class-balanced draws of chunks."""
    calib = fit_head("calib", train_set, genres, {"lam_cal": hp["lam_cal"]}, seed)
    torch.manual_seed(seed)
    model = FineTuned(_reference().net, calib, genres)
    w = chunk_weights(train_set, 1.0, len(genres))
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=hp["lr"])
    n, batch = len(train_set), 64
    model.train()
    for _ in range(hp["epochs"]):
        idx = torch.multinomial(w, n, replacement=True, generator=gen)
        for i in range(0, n, batch):
            j = idx[i:i + batch]
            opt.zero_grad()
            F.cross_entropy(model(train_set.T[j]), train_set.y[j]).backward()
            opt.step()
    return model


# ---- the shipped head ----------------------------------------------------------

def train_recipe(name, tracks, sets, genres, seed, log=None):
    """The shipped recipe: hyper-parameters by grouped 5-fold CV over
    `tracks`, then the head trained on all of them."""
    hp, _ = select_hp(name, tracks, sets, genres, "grouped", log=log)
    return fit_head(name, sets.train.subset(tracks), genres, hp, seed), hp


def cmd_train(args):
    """Trains head --head on train.txt (--on train: scored on valid.txt) or
    on train + valid (--on all: nothing held out; the numbers to quote are
    the same recipe's on valid.txt when trained on train.txt only, which
    this also measures, and its cross-validation from the results file)
    and writes it as a JSON layer list."""
    t0 = time.time()
    genres, train_tracks, valid_tracks = load_data(args.data)
    tracks = train_tracks + (valid_tracks if args.on == "all" else [])
    sets = Sets(train_tracks + valid_tracks, args.train_hop)
    head, hp = train_recipe(args.head, tracks, sets, genres, args.seed, log_to_stderr)
    inputs, layers = head.export_layers()

    def measured(h, ts):
        cs = sets.eval.subset(ts)
        p = h.probs(cs)
        ins, ls = h.export_layers()
        q = run_layers(ins, ls, cs.E.numpy(), cs.Z.numpy())
        if np.abs(p - q).max() > 1e-4:
            raise SystemExit(f"exported layers disagree with the trained head by "
                             f"{np.abs(p - q).max():.2e}")
        s = scores(q, cs, genres)
        return {m: round(s[m], 4) for m in ("track_accuracy", "balanced_accuracy",
                                             "chunk_accuracy")} | {
            "tracks": s["tracks"], "track_correct": s["track_correct"]}

    accuracies = {"training tracks (resubstitution, not an estimate)": measured(head, tracks)}
    if args.on == "train":
        accuracies["valid.txt"] = measured(head, valid_tracks)
    else:
        twin, _ = train_recipe(args.head, train_tracks, sets, genres, args.seed)
        accuracies["valid.txt, same recipe trained on train.txt only"] = \
            measured(twin, valid_tracks)
    if os.path.exists(args.results):
        with open(args.results) as f:
            got = json.load(f).get("heads", {}).get(args.head, {})
        for mode, label in (("cv", "5-fold CV over train + valid, stratified by genre "
                                   "(not artist-aware)"),
                            ("gcv", "5-fold CV over train + valid, grouped by id runs "
                                    "(artist proxy)")):
            if mode in got:
                accuracies[label] = {m: round(got[mode]["summary"][m][0], 4) for m in
                                     ("track_accuracy", "balanced_accuracy",
                                      "chunk_accuracy")}
    sha = sha256_of(CHECKPOINT)
    doc = {
        "inputs": inputs,
        "input_widths": {"embedding": ea.LAST_CHANNELS, "audioset_logits": ea.N_CLASSES},
        "layers": layers,
        "genres": genres,
        "training": {
            "head": args.head,
            "description": HEAD_NOTES[args.head],
            "hyper_parameters": hp,
            "hyper_parameter_choice": "lowest balanced Brier score in a 5-fold CV "
                                      "over the training tracks, folds grouped by runs "
                                      "of consecutive ids (an artist proxy)",
            "data": os.path.relpath(args.data, ROOT),
            "split": "train.txt" if args.on == "train" else "train.txt + valid.txt",
            "tracks": len(tracks),
            "train_chunks": f"3 s every {args.train_hop:g} s, genre balance "
                            f"{hp.get('balance', 1.0):g} (chunk_weights)",
            "evaluation": "3 s chunks back to back; a track's genre is the argmax of its "
                          "chunks' mean probability",
            "backbone": f"EfficientAT mn04_as, checkpoint sha256 {sha}, outputs from "
                        f"{BACKBONE_SOURCE}",
            "seed": args.seed,
            "accuracies": accuracies,
            "date": datetime.date.today().isoformat(),
            "command": "/usr/bin/python3 " + " ".join(
                [os.path.relpath(os.path.abspath(sys.argv[0]), ROOT)] + sys.argv[1:]),
            "seconds": round(time.time() - t0, 1),
        },
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")
    log_to_stderr(f"wrote {args.out}: {args.head} {hp}, {accuracies}")


HEAD_NOTES = {
    "zeroshot": "softmax over the 10 AudioSet genre logits",
    "calib": "per-genre scale and bias on the 10 AudioSet genre logits",
    "lin_emb": "linear layer on the 384-d embedding",
    "mlp_emb": "embedding -> dense -> ReLU -> dropout -> dense",
    "calib_emb": "calibrated genre logits plus a linear correction from the embedding "
                 "(L2 pulls the correction to zero)",
    "calib_logits": "calibrated genre logits plus a linear correction from all 527 logits",
    "calib_unbalanced": "calib trained with every track weighing the same",
    "calib_music": "calibrated genre logits plus a linear correction from AudioSet's 50 "
                   "music-genre logits (216-265)",
    "calib_emb_music": "calibrated genre logits plus a linear correction from the embedding "
                       "and AudioSet's 50 music-genre logits (216-265)",
    "calib_emb_logits": "calibrated genre logits plus a linear correction from the "
                        "embedding and all 527 logits",
    "calib_mlp_emb": "calibrated genre logits plus an MLP correction from the embedding",
}
BACKBONE_SOURCE = ("genred itself: `genred features --values embedding,audioset_logits` "
                   "(its decoder, front end and network)")


def cmd_table(args):
    """The comparison as a Markdown table, from the results file."""
    with open(args.results) as f:
        heads = json.load(f)["heads"]

    def pct(r, m):
        mean, std = r["summary"][m]
        return f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if len(r["runs"]) > 1 else "")

    def cell(r, with_count=False):
        if r is None:
            return ["-"] * 3
        first = pct(r, "track_accuracy")
        if with_count and len(r["runs"]) == 1:
            first += f" ({r['runs'][0]['track_correct']}/{r['runs'][0]['tracks']})"
        return [first, pct(r, "balanced_accuracy"), pct(r, "chunk_accuracy")]

    def hp_text(hp):
        return ", ".join(f"{k} {v:g}" for k, v in hp.items()
                         if k in HEADS_GRID_KEYS) or "-"

    print("| head | valid track | valid balanced | valid chunk | CV track | CV balanced "
          "| CV chunk | grouped CV track | grouped CV balanced | grouped CV chunk "
          "| hyper-parameters (valid run) | seeds | s (valid / CV / grouped CV) |")
    print("|" + "---|" * 13)
    for name in HEADS:
        if name not in heads:
            continue
        r = heads[name]
        v, c, g = r.get("valid"), r.get("cv"), r.get("gcv")
        secs = " / ".join(f"{x['seconds']:.0f}" if x else "-" for x in (v, c, g))
        n_seeds = max(len(x["runs"]) for x in (v, c, g) if x)
        print(f"| {name} | " + " | ".join(cell(v, True) + cell(c, True) + cell(g, True))
              + f" | {hp_text(v['hp']) if v else '-'} | {n_seeds} | {secs} |")


HEADS_GRID_KEYS = ("lam", "lam_cal", "hidden", "lr")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--train-hop", type=float, default=1.0,
                    help="seconds between training chunks (evaluation: back to back)")
    ap.add_argument("--threads", type=int, default=1)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compare", help="score heads on valid.txt and/or in 5-fold CV")
    c.add_argument("--heads", default=",".join(HEADS))
    c.add_argument("--eval", default="valid,cv,gcv",
                   help="valid: train.txt -> valid.txt; cv: 5-fold stratified CV over "
                        "train + valid; gcv: 5-fold CV grouped by id runs; "
                        "valid-torchaudio: as valid, but valid.txt resampled to 32 kHz "
                        "by torchaudio instead of libswresample")
    c.add_argument("--inner", choices=sorted(FOLDS), default="grouped",
                   help="folds of the CV that chooses hyper-parameters")
    c.add_argument("--seeds", type=int, default=5, help="seeds of non-convex heads")
    c.add_argument("--results", default=os.path.join(HERE, "results", "backbone-heads.json"))
    tb = sub.add_parser("table", help="print the comparison as a Markdown table")
    tb.add_argument("--results", default=os.path.join(HERE, "results", "backbone-heads.json"))
    t = sub.add_parser("train", help="train one head and write it as JSON")
    t.add_argument("--head", default="calib",
                   choices=sorted(h for h in HEADS if not HEADS[h][0].get("finetune")))
    t.add_argument("--on", choices=("train", "all"), default="all")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--results", default=os.path.join(HERE, "results", "backbone-heads.json"),
                   help="where the CV numbers quoted in the head's metadata come from")
    t.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    {"compare": cmd_compare, "train": cmd_train, "table": cmd_table}[args.cmd](args)


if __name__ == "__main__":
    main()
