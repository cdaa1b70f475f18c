#!/usr/bin/python3
"""Trains a genre classifier on genred's own features and exports a .gmodel.

    /usr/bin/python3 train/train.py --data ../shared/data/gtzan16k \\
        --genred build/genred --arch e --out models/gtzan-cnn.gmodel

trains design --arch (train/models.py) on the dataset's train tracks,
evaluates it on its valid tracks and exports it. --on all trains on train +
valid instead (nothing held out: the number to quote for such a model is the
cross-validation of the same recipe, --cv 5). train/reproduce runs the whole
pipeline that makes the bundled model; this file is its engine.

The recipe (Recipe below) is the same for every design, so designs compare
on equal terms:
  * features from `genred features` (dataset.py): training chunks start every
    second (overlapping 3 s chunks, ~28 per 30 s excerpt instead of 10) and
    come from the original audio and from a 128 kbit/s MP3 round trip of it
    (pitch and tempo re-recordings are available as --variants);
    evaluation uses the original audio in back-to-back chunks, exactly what
    the daemon computes;
  * each epoch draws a fixed number of chunks, class-balanced: a genre is
    drawn with probability proportional to n_tracks^(1 - balance), then a
    track, then a chunk, so a genre with 12 tracks is not drowned by one with
    70 and a track with many chunks does not outweigh one with few;
  * augmentation on the log-mel chunk: random gain (a dB shift), mixup,
    SpecAugment (time and frequency bands set to the mean);
  * AdamW with a one-cycle learning rate (warm-up, cosine decay), label
    smoothing, a fixed number of epochs: no checkpoint is picked on the
    validation tracks.
Training is deterministic for a given seed and thread count.

What it does not do: feature extraction (dataset.py), scoring
(evaluate.py), the model card (card.py).
"""
import argparse
import dataclasses
import json
import os
import sys
import time

# OpenMP threads that spin while waiting are a disaster on a shared CPU:
# with other work running, 2 spinning threads measured 5-10x slower than
# passive ones here. Must be set before torch starts its thread pool.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dataset  # noqa: E402
import evaluate  # noqa: E402
import gmodel  # noqa: E402
import models  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
PARAMS = {"logmel": os.path.join(HERE, "features.json"),
          "waveform": os.path.join(HERE, "features-waveform.json")}


@dataclasses.dataclass
class Recipe:
    arch: str = "e"
    epochs: int = 24
    epoch_chunks: int = 1024       # chunks drawn per epoch
    batch: int = 32
    lr: float = 0.0                # 0: the design's own (models.LR)
    weight_decay: float = 1e-2
    label_smoothing: float = 0.1
    balance: float = 0.75          # 1: genres equally likely; 0: as in the data
    mixup: float = 0.3             # Beta(a, a) mixing; 0: off
    gain_db: float = 6.0           # random gain in [-gain_db, +gain_db]
    eq_db: float = 0.0             # random smooth EQ curve, up to +-eq_db; 0: off
    time_masks: int = 2
    time_mask: int = 24            # frames, at most, per mask
    freq_masks: int = 2
    freq_mask: int = 16            # mel bands, at most, per mask
    chunk_hop: float = 1.0         # seconds between training chunk starts
    # Re-recordings of the training audio (dataset.VARIANTS). Pitch and tempo
    # changes (+-1 semitone, +-8 %) cost ~5 minutes of ffmpeg per variant and
    # did not help on valid.txt at this budget (train/results/experiments.md).
    variants: tuple = ("orig", "mp3")
    seed: int = 1234
    threads: int = 2

    def learning_rate(self):
        return self.lr or models.LR[self.arch]

    def kind(self):
        return models.INPUT[self.arch]


def dsae_recipe(base):
    """Design (d)'s recipe, from base: the waveform has no spectrogram to
    mask, and on valid.txt (train/results/designs.json) the small dense net
    did best without mixup and with half-balanced sampling (45 % track
    accuracy against 21 % with base's mixup 0.3 and full balance), trained
    for 200 short epochs (seconds each)."""
    return dataclasses.replace(base, arch="d", epochs=200, mixup=0.0, balance=0.5,
                               time_masks=0, freq_masks=0,
                               variants=tuple(v for v in base.variants if v in ("orig", "mp3")))


@dataclasses.dataclass
class Context:
    """Where things are: the dataset, genred, the feature cache."""
    data: str
    genred: str
    cache: str = os.path.join(HERE, ".cache")
    jobs: int = 2


# ---- data -----------------------------------------------------------------

# Training chunks already read, per (feature params, variant, hop, track):
# float16 (half the memory; ~1.4 GB for 273 tracks x 6 variants x ~26
# chunks of 128 x 128) and their float64 sum and sum of squares. Kept for
# the life of the process, so cross-validation reads every file once.
_CHUNKS = {}


def _track_chunks(ctx, params, variant, hop, tracks):
    paths = dataset.extract(ctx.genred, params, tracks, ctx.cache, ctx.jobs,
                            variant=variant, chunk_hop=hop)
    out = []
    for t in tracks:
        key = paths[t.id]  # the cache file: params, binary, variant, hop, track
        if key not in _CHUNKS:
            a = np.load(paths[t.id])
            a = a.reshape(len(a), 1, -1, a.shape[-1])
            a64 = a.astype(np.float64)
            _CHUNKS[key] = (a.astype(np.float16), a64.sum(), (a64 * a64).sum(), a.size)
        out.append(_CHUNKS[key])
    return out


class Pool:
    """Training chunks of a set of tracks over all variants. Chunk i is
    row rows[i] of parts[part[i]]; owner[i] is the index in tracks of its
    track, y[i] its label."""

    def __init__(self, ctx, recipe, tracks):
        params = PARAMS[recipe.kind()]
        self.tracks, self.parts = tracks, []
        part, rows, owner = [], [], []
        total = np.zeros(3)
        for vi, v in enumerate(recipe.variants):
            for i, (a, s1, s2, n) in enumerate(_track_chunks(ctx, params, v, recipe.chunk_hop, tracks)):
                part.append(np.full(len(a), len(self.parts)))
                rows.append(np.arange(len(a)))
                owner.append(np.full(len(a), i))
                self.parts.append(a)
                if vi == 0:         # normalise with the first variant's (the original's) chunks
                    total += (s1, s2, n)
        self.part, self.rows = np.concatenate(part), np.concatenate(rows)
        self.owner = np.concatenate(owner)
        self.y = np.array([t.label for t in tracks], dtype=np.int64)[self.owner]
        self.shape = self.parts[0].shape[1:]
        # Normalisation constants (float64); they go into the model file as
        # norm_mean and norm_std, which genred applies to its features.
        self.mean = float(total[0] / total[2])
        self.std = float(np.sqrt(max(total[1] / total[2] - self.mean ** 2, 1e-12)))

    def __len__(self):
        return len(self.y)

    def batch(self, idx):
        """float32 [len(idx), C, H, W] of chunks idx, not normalised."""
        return np.stack([self.parts[p][r] for p, r in zip(self.part[idx], self.rows[idx])]
                        ).astype(np.float32)

    def sampling_weights(self, balance):
        """Per-chunk probability: genre ~ n_tracks^(1-balance), then a track
        uniformly within its genre, then a chunk within the track."""
        labels = np.array([t.label for t in self.tracks])
        tracks_per_genre = np.bincount(labels, minlength=labels.max() + 1)
        chunks_per_track = np.bincount(self.owner, minlength=len(self.tracks))
        w = (tracks_per_genre[self.y].astype(np.float64) ** -balance
             / chunks_per_track[self.owner])
        return torch.tensor(w / w.sum())


def eval_chunks(ctx, kind, tracks):
    """The daemon's view of tracks: original audio, back-to-back chunks."""
    paths = dataset.extract(ctx.genred, PARAMS[kind], tracks, ctx.cache, ctx.jobs)
    return dataset.load_chunks(tracks, paths)


# ---- training -------------------------------------------------------------

def spec_augment(x, recipe, gen):
    """Sets random time and frequency bands of each chunk to 0, the mean of
    normalised features (in place)."""
    n, _, f, t = x.shape
    for i in range(n):
        for _ in range(recipe.time_masks):
            w = int(torch.randint(0, recipe.time_mask + 1, (1,), generator=gen))
            s = int(torch.randint(0, t - w + 1, (1,), generator=gen))
            x[i, :, :, s:s + w] = 0
        for _ in range(recipe.freq_masks):
            w = int(torch.randint(0, recipe.freq_mask + 1, (1,), generator=gen))
            s = int(torch.randint(0, f - w + 1, (1,), generator=gen))
            x[i, :, s:s + w, :] = 0
    return x


def random_eq(n, bands, amplitude, gen):
    """[n, 1, bands, 1] smooth random curves over the mel bands, at most
    +-amplitude: an equaliser's tilt and bumps, which is what differs
    between recordings (and artists) of one genre. A sum of the three lowest
    cosines over the band index with uniform random weights."""
    f = torch.linspace(0, torch.pi, bands)
    k = torch.arange(1, 4, dtype=torch.float32)
    w = (torch.rand(n, 3, generator=gen) * 2 - 1) * (amplitude / 3)
    return (w[:, :, None] * torch.cos(k[None, :, None] * f[None, None, :])).sum(1)[:, None, :, None]


def fit(recipe, pool, n_genres, log=print):
    """Trains recipe's design on pool; returns the model in eval mode.
    Design (d) is trained on cross-entropy and reconstruction together:
    (1 - w) x CE + w x MSE(decoder(code), input), w = 0.9."""
    torch.manual_seed(recipe.seed)
    torch.set_num_threads(recipe.threads)
    gen = torch.Generator().manual_seed(recipe.seed)
    input_shape = pool.shape
    model = models.ARCHS[recipe.arch](n_genres, input_shape)
    is_ae = isinstance(model, models.SoftmaxAutoencoder)
    weights = pool.sampling_weights(recipe.balance)
    ce = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    lr = recipe.learning_rate()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=recipe.weight_decay)
    steps_per_epoch = -(-recipe.epoch_chunks // recipe.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr,
                                                total_steps=recipe.epochs * steps_per_epoch)
    rng = np.random.default_rng(recipe.seed)   # mixup weights
    t0 = time.time()
    for epoch in range(recipe.epochs):
        model.train()
        idx_all = torch.multinomial(weights, recipe.epoch_chunks, replacement=True, generator=gen)
        total = 0.0
        for s in range(steps_per_epoch):
            idx = idx_all[s * recipe.batch:(s + 1) * recipe.batch].numpy()
            xb = torch.from_numpy(pool.batch(idx))
            yb = torch.from_numpy(pool.y[idx])
            if is_ae:
                # Gain scales the waveform envelope: apply it before normalising.
                g = 10 ** ((torch.rand(len(idx), 1, 1, 1, generator=gen) * 2 - 1)
                           * recipe.gain_db / 20)
                xb = (xb * g - pool.mean) / pool.std
            else:
                xb = (xb - pool.mean) / pool.std
                xb += ((torch.rand(len(idx), 1, 1, 1, generator=gen) * 2 - 1)
                       * recipe.gain_db / pool.std)
                if recipe.eq_db > 0:
                    xb += random_eq(len(idx), xb.shape[2], recipe.eq_db / pool.std, gen)
                spec_augment(xb, recipe, gen)
            lam, perm = 1.0, None
            if recipe.mixup > 0:
                lam = float(rng.beta(recipe.mixup, recipe.mixup))
                perm = torch.randperm(len(idx), generator=gen)
                xb = lam * xb + (1 - lam) * xb[perm]
            out = model(xb)
            logits = out[0] if is_ae else out
            loss = lam * ce(logits, yb)
            if perm is not None:
                loss = loss + (1 - lam) * ce(logits, yb[perm])
            if is_ae:
                w = models.RECONSTRUCTION_WEIGHT
                loss = (1 - w) * loss + w * nn.functional.mse_loss(out[1], xb.flatten(1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss) * len(idx)
        log(f"epoch {epoch + 1}/{recipe.epochs} loss {total / (steps_per_epoch * recipe.batch):.4f} "
            f"({time.time() - t0:.0f} s)")
    model.eval()
    return model


def classifier(model):
    """The part of a trained model the daemon runs (an nn.Sequential)."""
    return model.classifier() if isinstance(model, models.SoftmaxAutoencoder) else model


def predict(model, X, mean, std, batch=128):
    """Chunk probabilities [N, G] of normalised X."""
    net = classifier(model).eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(X), batch):
            x = (torch.from_numpy(np.asarray(X[i:i + batch], dtype=np.float32)) - mean) / std
            out.append(torch.softmax(net(x), dim=1).numpy())
    return np.concatenate(out)


def export(path, model, genres, recipe, mean, std, meta, name, version):
    params = dataset.load_params(PARAMS[recipe.kind()])
    params["norm_mean"], params["norm_std"] = mean, std
    what = {"waveform": "raw-waveform envelopes", "logmel": "log-mel chunks"}[recipe.kind()]
    net = nn.Sequential(*classifier(model), nn.Softmax(dim=-1)).eval()
    return gmodel.save(path, net, genres, params, name=name, version=version,
                       description=f"design ({recipe.arch}) of train/models.py on genred's "
                                   f"{what}, trained on {meta.get('dataset', '?')}",
                       training=meta)


def train_and_evaluate(ctx, recipe, genres, train_t, test_t, log=print):
    """Fits recipe on train_t; scores it on test_t (if any). Returns (model,
    pool mean, pool std, evaluation or None, seconds of training)."""
    pool = Pool(ctx, recipe, train_t)
    log(f"{recipe.arch}: {len(train_t)} training tracks, {len(pool)} chunks "
        f"over {len(recipe.variants)} variants; features mean {pool.mean:.3f} std {pool.std:.3f}")
    t0 = time.time()
    model = fit(recipe, pool, len(genres), log)
    seconds = time.time() - t0
    mean, std = pool.mean, pool.std
    del pool
    ev = None
    if test_t:
        X, y, owner = eval_chunks(ctx, recipe.kind(), test_t)
        ev = evaluate.evaluate_probs(predict(model, X, mean, std), y, owner,
                                     [t.label for t in test_t], genres)
        log(f"{recipe.arch}: {len(test_t)} held-out tracks: {evaluate.summary(ev)}")
    return model, mean, std, ev, seconds


def cross_validate(ctx, recipe, genres, tracks, k=5, log=print, keep=None):
    """k-fold cross-validation by track (stratified by genre, not by artist:
    GTZAN's artists are not in the lists). Returns per-fold metrics and the
    out-of-fold track predictions (every track scored by the one model that
    did not see it). keep, a list, receives ((model, mean, std), test tracks)
    of every fold."""
    parts = dataset.folds(tracks, k, seed=recipe.seed)
    per_fold, oof_votes, oof_mean, labels, ids = [], [], [], [], []
    for i, test_t in enumerate(parts):
        train_t = [t for j, p in enumerate(parts) if j != i for t in p]
        log(f"fold {i + 1}/{k}: train {len(train_t)} tracks, test {len(test_t)}")
        model, mean, std, ev, secs = train_and_evaluate(ctx, recipe, genres, train_t, test_t, log)
        if keep is not None:
            keep.append(((model, mean, std), test_t))
        per_fold.append({"fold": i + 1, "tracks": len(test_t), "train_seconds": round(secs, 1),
                         "track_accuracy_votes": ev["votes"]["accuracy"],
                         "track_accuracy_mean_prob": ev["mean_prob"]["accuracy"],
                         "balanced_accuracy_votes": ev["votes"]["balanced_accuracy"],
                         "chunk_accuracy": ev["chunk"]["accuracy"]})
        oof_votes += ev["track_pred_votes"]
        oof_mean += ev["track_pred_mean_prob"]
        labels += [t.label for t in test_t]
        ids += [t.id for t in test_t]

    def spread(key):
        v = np.array([f[key] for f in per_fold])
        return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                "min": float(v.min()), "max": float(v.max())}
    return {
        "k": k, "tracks": len(tracks), "stratified_by": "genre", "artist_aware": False,
        "folds": per_fold,
        "track_accuracy_votes": spread("track_accuracy_votes"),
        "track_accuracy_mean_prob": spread("track_accuracy_mean_prob"),
        "balanced_accuracy_votes": spread("balanced_accuracy_votes"),
        "chunk_accuracy": spread("chunk_accuracy"),
        "out_of_fold_votes": evaluate.metrics(labels, oof_votes, genres),
        "out_of_fold_mean_prob": evaluate.metrics(labels, oof_mean, genres),
        "track_ids": ids,
    }


def recipe_from_args(args):
    r = Recipe(arch=args.arch, seed=args.seed, threads=args.threads)
    for f in dataclasses.fields(Recipe):
        v = getattr(args, f.name, None)
        if v is not None and f.name not in ("arch", "seed", "threads"):
            setattr(r, f.name, tuple(v.split(",")) if f.name == "variants" else v)
    if r.kind() == "waveform":
        # Spectrogram augmentations do not apply to an envelope.
        r.time_masks = r.freq_masks = 0
    return r


def add_recipe_args(ap):
    ap.add_argument("--arch", choices=sorted(models.ARCHS), default="e")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=2)
    defaults = Recipe()
    for f in dataclasses.fields(Recipe):
        if f.name in ("arch", "seed", "threads"):
            continue
        d = getattr(defaults, f.name)
        t = str if isinstance(d, tuple) else type(d)
        ap.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=t, default=None,
                        help=f"default {','.join(d) if isinstance(d, tuple) else d}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="folder with one sub-folder per genre")
    ap.add_argument("--genred", required=True, help="path of the genred binary")
    ap.add_argument("--cache", default=os.path.join(HERE, ".cache"))
    ap.add_argument("--on", choices=("train", "all"), default="train",
                    help="train: fit the train tracks, score the valid ones; all: fit both")
    ap.add_argument("--cv", type=int, default=0, help="K > 1: K-fold cross-validation instead")
    ap.add_argument("--name", help="the model's name in its file and in every answer "
                    "(default: --out's file name without .gmodel)")
    ap.add_argument("--version", default="1.0.0")
    ap.add_argument("--out", help="write the model here (.gmodel)")
    ap.add_argument("--json", help="write the evaluation here")
    add_recipe_args(ap)
    args = ap.parse_args()
    if args.out and not args.name:
        args.name = os.path.splitext(os.path.basename(args.out))[0]
    recipe = recipe_from_args(args)
    ctx = Context(data=args.data, genred=args.genred, cache=args.cache, jobs=args.threads)
    genres, tracks = dataset.discover(args.data)
    train_t, valid_t = dataset.split(args.data, tracks, seed=args.seed)
    print(f"{len(genres)} genres, {len(train_t)} train / {len(valid_t)} valid tracks; "
          f"recipe {dataclasses.asdict(recipe)}", flush=True)
    log = lambda s: print(s, flush=True)  # noqa: E731
    if args.cv > 1:
        result = cross_validate(ctx, recipe, genres, train_t + valid_t, args.cv, log)
        print("cv", json.dumps({k: result[k] for k in ("track_accuracy_votes",
                                                       "track_accuracy_mean_prob",
                                                       "balanced_accuracy_votes")}))
    else:
        fit_t = train_t + valid_t if args.on == "all" else train_t
        model, mean, std, ev, secs = train_and_evaluate(
            ctx, recipe, genres, fit_t, [] if args.on == "all" else valid_t, log)
        result = {"train_seconds": round(secs, 1), "evaluation": ev}
        if args.out:
            meta = {"dataset": os.path.basename(os.path.normpath(args.data)),
                    "trained_on": args.on, "tracks": len(fit_t),
                    "recipe": dataclasses.asdict(recipe), "train_seconds": round(secs, 1)}
            if ev:
                meta["valid"] = {"track_accuracy_votes": ev["votes"]["accuracy"],
                                 "balanced_accuracy_votes": ev["votes"]["balanced_accuracy"],
                                 "chunk_accuracy": ev["chunk"]["accuracy"]}
            export(args.out, model, genres, recipe, mean, std, meta, args.name, args.version)
            log(f"wrote {args.out}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
