#!/usr/bin/python3
"""distill.py - the bundled CNN learns from the backbone: knowledge
distillation of the pretrained teacher (teacher.py) into design (e) of
train/models.py, on genred's own features.

    /usr/bin/python3 train/distill.py --data ../shared/data/gtzan16k \\
        --genred build/genred [--head calib] [--alpha 0.3] [--temperature 2] ...

trains a student on the train.txt tracks (and what is made from them) and
scores it on valid.txt, beside the teacher; --cv 5 cross-validates instead.
train/pipeline.py runs the whole thing that makes the bundled model.

What the student learns from (augment.py renders it, genred computes both
views, everything cached):
  * every training track, its chunks starting every --hop seconds, as it is
    and as a 128 kbit/s MP3;
  * --n-fx random re-recordings of each (gain, EQ, pitch or tempo, MP3),
    which the teacher labels afresh;
  * --n-mixes mixes of two tracks of different genres (only tracks the run
    may learn from), labelled by the teacher alone;
  * optionally unlabelled music (music.py), labelled by the teacher alone.
The loss is (1 - alpha) x T^2 x KL(teacher at temperature T || student at T)
+ alpha x cross-entropy with the true genre, the latter only on chunks of a
labelled track; --aux adds the mean squared error of a training-only linear
layer on the student's pooled features against the teacher's z-scored
embedding and/or AudioSet logits (by default both; it helps only with the
long training the defaults do: results/distill.md). Draws per epoch: a
share --mix-share from the mixes, --unl-share from the unlabelled music,
the rest from the tracks, class-balanced as in train.py (genre ~
n_tracks^(1 - balance), then a track, then a chunk of any of its
recordings).

The teacher's head must not have seen the tracks a run is scored on: --head
zero (no labels at all) or calib (fitted here on the run's training tracks
only); --head committed (models/efficientat-mn04-genre-head.json, trained on
every track) is for the shipped model alone.

What it does not do: render audio (augment.py), run the backbone
(teacher.py), export formats (gmodel.py).
"""
import argparse
import dataclasses
import json
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import augment  # noqa: E402
import dataset  # noqa: E402
import evaluate  # noqa: E402
import models  # noqa: E402
import teacher as teachers  # noqa: E402
import train  # noqa: E402

HERE = train.HERE
PARAMS = train.PARAMS["logmel"]


@dataclasses.dataclass
class Recipe:
    arch: str = "e"
    epochs: int = 40               # 40 x 8192 draws: 11 passes over valid.txt's run's pool
    epoch_chunks: int = 8192
    batch: int = 32
    lr: float = 0.0                # 0: the design's own (models.LR)
    weight_decay: float = 1e-2
    temperature: float = 2.0
    alpha: float = 0.3             # weight of the true labels; 0: teacher only
    head: str = "calib"            # zero | calib | committed (shipped model only)
    balance: float = 0.75
    mix_share: float = 0.4         # share of draws from two-track mixes
    unl_share: float = 0.0         # share of draws from unlabelled music
    mixup: float = 0.0             # Beta(a, a) mixing of chunks and their targets; 0: off
    aux: str = "embedding,audioset_logits"  # teacher values also regressed (training only)
    aux_weight: float = 1.0        # weight of that regression (mean squared error, z-scored)
    adjust: float = 0.0            # logit adjustment: tau x log(the draws' genre prior) off the bias
    gain_db: float = 6.0
    eq_db: float = 0.0
    time_masks: int = 2
    time_mask: int = 24
    freq_masks: int = 2
    freq_mask: int = 16
    hop: float = 1.0               # seconds between training chunk starts
    n_fx: int = 1                  # random re-recordings per track
    n_mixes: int = 1800            # two-track mixes drawn among all tracks (a run uses its own)
    music_hop: float = 1.5         # chunk hop on the unlabelled music
    seed: int = 1234
    threads: int = 2

    def learning_rate(self):
        return self.lr or models.LR[self.arch]

    def kind(self):
        return "logmel"


@dataclasses.dataclass
class Context:
    data: str
    genred: str
    checkpoint: str = teachers.CHECKPOINT
    cache: str = os.path.join(HERE, ".cache")
    jobs: int = 2
    music: tuple = ()              # unlabelled music files (music.py)


class World:
    """Every source of a plan with both views, loaded once per process: a
    run picks the ones it may use (Pool)."""

    def __init__(self, ctx, recipe, genres, tracks, log=print):
        self.ctx, self.genres, self.tracks = ctx, genres, tracks
        self.by_id = {t.id: t for t in tracks}
        self.teacher = teachers.Teacher(ctx.genred, ctx.checkpoint, ctx.cache)
        t0 = time.time()
        self.sources = augment.plan(tracks, recipe.n_fx, recipe.n_mixes, recipe.seed)
        self.data, fresh = augment.extract(self.sources, self.by_id, ctx.genred, PARAMS, self.teacher,
                                    ctx.cache, recipe.hop, ctx.jobs, log)
        self.music_sources = augment.plan([], 0, 0, recipe.seed, files=ctx.music)
        self.music, fresh_music = augment.extract(
            self.music_sources, self.by_id, ctx.genred, PARAMS, self.teacher, ctx.cache,
            recipe.music_hop, ctx.jobs, log) if ctx.music else ([], 0)
        self.rendered = fresh + fresh_music     # sources not found in the cache
        # Back-to-back chunks of the original tracks: the daemon's view, for
        # scoring the teacher and fitting a calibrated head.
        self.track_values = self.teacher.track_values(tracks, ctx.jobs)
        log(f"sources ready: {len(self.sources)} from tracks, {len(self.music)} music files "
            f"({time.time() - t0:.0f} s)")

    def head(self, recipe, fit_tracks):
        """The teacher's genre head for a run that may learn from fit_tracks."""
        if recipe.head == "zero":
            return teachers.zero_shot_head()
        if recipe.head == "calib":
            return teachers.fit_calibrated(self.track_values, fit_tracks, self.genres)
        if recipe.head == "committed":
            h = teachers.committed_head()
            if h is None:
                raise SystemExit(f"--head committed: {teachers.HEAD_FILE} does not exist")
            return h
        raise ValueError(f"unknown head {recipe.head!r}")

    def student_chunks(self, tracks):
        """The student's view of tracks as the daemon has it (train.eval_chunks)."""
        ctx = train.Context(data=self.ctx.data, genred=self.ctx.genred, cache=self.ctx.cache,
                            jobs=self.ctx.jobs)
        return train.eval_chunks(ctx, "logmel", tracks)

    def teacher_eval(self, head, tracks):
        """The teacher's scores on tracks (back-to-back chunks)."""
        probs, y, owner = [], [], []
        for i, t in enumerate(tracks):
            p = teachers.softmax(teachers.apply_head(head, self.track_values[t.id]))
            probs.append(p)
            y += [t.label] * len(p)
            owner += [i] * len(p)
        return evaluate.evaluate_probs(np.concatenate(probs), np.array(y), np.array(owner),
                                       [t.label for t in tracks], self.genres)


class Pool:
    """The chunks a run learns from: the sources of its tracks, the mixes of
    two of them, the unlabelled music; per chunk the teacher's genre logits
    and the true label (-1 where there is none)."""

    def __init__(self, world, recipe, fit_tracks, head):
        allowed = {t.id for t in fit_tracks}
        index = {t.id: i for i, t in enumerate(fit_tracks)}
        self.parts, part, rows, y, group, logits, aux = [], [], [], [], [], [], []
        groups = []   # per group: ("track", track index) | ("mix",) | ("music",)
        total = np.zeros(3)
        chosen = [(s, d) for s, d in zip(world.sources, world.data) if augment.usable(s, allowed)]
        chosen += list(zip(world.music_sources, world.music)) if recipe.unl_share > 0 else []
        track_group = {}
        for s, (x, t) in chosen:
            if len(x) == 0:
                continue
            if s["kind"] == "track":
                tr = fit_tracks[index[s["track"]]]
                if tr.id not in track_group:
                    track_group[tr.id] = len(groups)
                    groups.append(("track", tr.label))
                g, label = track_group[tr.id], tr.label
                if not s["fx"]:       # normalise on the original recordings
                    x64 = x.astype(np.float64)
                    total += (x64.sum(), (x64 * x64).sum(), x.size)
            else:
                g, label = len(groups), -1
                groups.append((s["kind"],))
            n = len(x)
            part.append(np.full(n, len(self.parts)))
            rows.append(np.arange(n))
            y.append(np.full(n, label))
            group.append(np.full(n, g))
            logits.append(teachers.apply_head(head, t).astype(np.float32))
            if recipe.aux:
                named = teachers.split_values(t)
                aux.append(np.concatenate([named[v] for v in recipe.aux.split(",")],
                                          axis=1))
            self.parts.append(x[:, None])
        self.part, self.rows = np.concatenate(part), np.concatenate(rows)
        self.y, self.group = np.concatenate(y), np.concatenate(group)
        self.logits = np.concatenate(logits)
        self.aux = None
        if aux:
            a = np.concatenate(aux).astype(np.float32)
            self.aux = (a - a.mean(0)) / (a.std(0) + 1e-6)
        self.groups = groups
        self.mean = float(total[0] / total[2])
        self.std = float(np.sqrt(max(total[1] / total[2] - self.mean ** 2, 1e-12)))
        self.shape = self.parts[0].shape[1:]
        self.counts = {k: int(sum(1 for g in groups if g[0] == k)) for k in ("track", "mix", "file")}
        self.chunks = {k: int(sum(np.sum(self.group == i) for i, g in enumerate(groups)
                                  if g[0] == k)) for k in ("track", "mix", "file")}

    def __len__(self):
        return len(self.y)

    def batch(self, idx):
        return np.stack([self.parts[p][r] for p, r in zip(self.part[idx], self.rows[idx])]
                        ).astype(np.float32)

    def target_prior(self, weights, alpha):
        """The genre distribution the student was taught: the training target
        (the teacher at temperature 1, mixed with the true label at alpha
        where there is one) averaged over the draw probabilities. Its log,
        taken off the read-out's bias, makes the student answer as if every
        genre had been drawn alike (logit adjustment, Menon et al. 2021):
        the draws favour the genres with many tracks and mixes."""
        p = teachers.softmax(self.logits)
        has = self.y >= 0
        p[has] *= 1 - alpha
        p[has, self.y[has]] += alpha
        prior = weights @ p
        return prior / prior.sum()

    def sampling_weights(self, recipe, n_genres):
        """Per-chunk draw probability: shares of tracks, mixes and music as
        the recipe says; among tracks class-balanced, then a track, then a
        chunk; among mixes and music a source, then a chunk."""
        kinds = np.array([{"track": 0, "mix": 1, "file": 2}[g[0]] for g in self.groups])
        per_group = np.bincount(self.group, minlength=len(self.groups)).astype(np.float64)
        w = 1.0 / per_group[self.group]
        labels = np.array([g[1] if g[0] == "track" else -1 for g in self.groups])
        tracks_per_genre = np.bincount(labels[labels >= 0], minlength=n_genres).astype(np.float64)
        k = kinds[self.group]
        lab = k == 0
        w[lab] *= tracks_per_genre[labels[self.group[lab]]] ** -recipe.balance
        share = {0: 1.0 - recipe.mix_share - (recipe.unl_share if self.counts["file"] else 0),
                 1: recipe.mix_share if self.counts["mix"] else 0.0,
                 2: recipe.unl_share if self.counts["file"] else 0.0}
        if not self.counts["mix"]:
            share[0] += recipe.mix_share
        out = np.zeros_like(w)
        for kind, s in share.items():
            m = k == kind
            if m.any() and s > 0:
                out[m] = s * w[m] / w[m].sum()
        return torch.tensor(out / out.sum())


def fit(recipe, pool, n_genres, log=print):
    torch.manual_seed(recipe.seed)
    torch.set_num_threads(recipe.threads)
    gen = torch.Generator().manual_seed(recipe.seed)
    model = models.ARCHS[recipe.arch](n_genres, pool.shape)
    # The regression of teacher values reads the pooled features before the
    # read-out (dropout, linear); its layer exists for training only.
    body, readout = model[:-2], model[-2:]
    aux_layer = nn.Linear(readout[-1].in_features, pool.aux.shape[1]) if pool.aux is not None \
        else None
    params = list(model.parameters()) + (list(aux_layer.parameters()) if aux_layer else [])
    weights = pool.sampling_weights(recipe, n_genres)
    lr = recipe.learning_rate()
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=recipe.weight_decay)
    steps = -(-recipe.epoch_chunks // recipe.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=recipe.epochs * steps)
    rng = np.random.default_rng(recipe.seed)
    T, a = recipe.temperature, recipe.alpha
    t0 = time.time()
    for epoch in range(recipe.epochs):
        model.train()
        idx_all = torch.multinomial(weights, recipe.epoch_chunks, replacement=True, generator=gen)
        total = 0.0
        for s in range(steps):
            idx = idx_all[s * recipe.batch:(s + 1) * recipe.batch].numpy()
            xb = (torch.from_numpy(pool.batch(idx)) - pool.mean) / pool.std
            xb += (torch.rand(len(idx), 1, 1, 1, generator=gen) * 2 - 1) * recipe.gain_db / pool.std
            if recipe.eq_db > 0:
                xb += train.random_eq(len(idx), xb.shape[2], recipe.eq_db / pool.std, gen)
            train.spec_augment(xb, recipe, gen)
            target = torch.softmax(torch.from_numpy(pool.logits[idx]) / T, dim=1)
            hard = F.one_hot(torch.from_numpy(np.maximum(pool.y[idx], 0)), n_genres).float()
            has = torch.from_numpy(pool.y[idx] >= 0).float()
            if recipe.mixup > 0:
                lam = float(rng.beta(recipe.mixup, recipe.mixup))
                perm = torch.randperm(len(idx), generator=gen)
                xb = lam * xb + (1 - lam) * xb[perm]
                target = lam * target + (1 - lam) * target[perm]
                hard = lam * hard + (1 - lam) * hard[perm]
                has = has * has[perm]
            feat = body(xb)
            out = readout(feat)
            kd = -(target * F.log_softmax(out / T, dim=1)).sum(1) * T * T
            ce = -(hard * F.log_softmax(out, dim=1)).sum(1)
            loss = ((1 - a * has) * kd + a * has * ce).mean()
            if aux_layer is not None:
                at = torch.from_numpy(pool.aux[idx])
                if recipe.mixup > 0:
                    at = lam * at + (1 - lam) * at[perm]
                loss = loss + recipe.aux_weight * F.mse_loss(aux_layer(feat), at)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss) * len(idx)
        if (epoch + 1) % 10 == 0 or epoch + 1 == recipe.epochs:
            log(f"epoch {epoch + 1}/{recipe.epochs} loss {total / (steps * recipe.batch):.4f} "
                f"({time.time() - t0:.0f} s)")
    model.eval()
    if recipe.adjust:
        prior = pool.target_prior(weights.numpy(), recipe.alpha)
        with torch.no_grad():
            readout[-1].bias -= torch.from_numpy(recipe.adjust * np.log(prior)).float()
        log("logit adjustment: draws' genre prior " + " ".join(f"{p:.3f}" for p in prior))
    return model


def run(world, recipe, fit_tracks, test_tracks, log=print):
    """Fits a student on what fit_tracks allow; scores it and its teacher on
    test_tracks. Returns (model, mean, std, student eval or None, teacher
    eval or None, head, seconds, pool summary)."""
    head = world.head(recipe, fit_tracks)
    pool = Pool(world, recipe, fit_tracks, head)
    summary = {"chunks": len(pool), "sources": pool.counts, "chunks_by_kind": pool.chunks}
    log(f"{recipe.arch}: {len(fit_tracks)} tracks; {len(pool)} chunks "
        f"({pool.counts['mix']} mixes, {pool.counts['file']} music files); head {recipe.head}")
    t0 = time.time()
    model = fit(recipe, pool, len(world.genres), log)
    secs = time.time() - t0
    mean, std = pool.mean, pool.std
    del pool
    ev = tev = None
    if test_tracks:
        X, y, owner = world.student_chunks(test_tracks)
        ev = evaluate.evaluate_probs(train.predict(model, X, mean, std), y, owner,
                                     [t.label for t in test_tracks], world.genres)
        tev = world.teacher_eval(head, test_tracks)
        log(f"student: {evaluate.summary(ev)}")
        log(f"teacher: {evaluate.summary(tev)}")
    return model, mean, std, ev, tev, head, secs, summary


def cross_validate(world, recipe, tracks, k=5, log=print, keep=None):
    """k-fold CV by track (dataset.folds): each fold's student learns from
    the other folds' tracks, their mixes and re-recordings, with a teacher
    head fitted on them alone. keep, a list, receives ((model, mean, std),
    test tracks) of every fold."""
    parts = dataset.folds(tracks, k, seed=recipe.seed)
    per_fold, out = [], {"student": ([], [], []), "teacher": ([], [], [])}
    for i, test_t in enumerate(parts):
        fit_t = [t for j, p in enumerate(parts) if j != i for t in p]
        log(f"fold {i + 1}/{k}: {len(fit_t)} tracks to learn from, {len(test_t)} to score")
        model, mean, std, ev, tev, _, secs, _ = run(world, recipe, fit_t, test_t, log)
        if keep is not None:
            keep.append(((model, mean, std), test_t))
        row = {"fold": i + 1, "tracks": len(test_t), "train_seconds": round(secs, 1)}
        for who, e in (("student", ev), ("teacher", tev)):
            row[who] = {"track_accuracy_votes": e["votes"]["accuracy"],
                        "track_accuracy_mean_prob": e["mean_prob"]["accuracy"],
                        "balanced_accuracy_votes": e["votes"]["balanced_accuracy"],
                        "chunk_accuracy": e["chunk"]["accuracy"]}
            out[who][0].extend(e["track_pred_votes"])
            out[who][1].extend(e["track_pred_mean_prob"])
        out["student"][2].extend(t.label for t in test_t)
        per_fold.append(row)
    labels = out["student"][2]

    def spread(who, key):
        v = np.array([f[who][key] for f in per_fold])
        return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                "min": float(v.min()), "max": float(v.max())}
    res = {"k": k, "tracks": len(tracks), "stratified_by": "genre", "artist_aware": False,
           "folds": per_fold}
    for who in ("student", "teacher"):
        res[who] = {key: spread(who, key) for key in ("track_accuracy_votes",
                                                      "track_accuracy_mean_prob",
                                                      "balanced_accuracy_votes",
                                                      "chunk_accuracy")}
        res[who]["out_of_fold_votes"] = evaluate.metrics(labels, out[who][0], world.genres)
        res[who]["out_of_fold_mean_prob"] = evaluate.metrics(labels, out[who][1], world.genres)
    return res


HEAD_WORDS = {
    "zero": "the zero-shot head (softmax over the 10 AudioSet genre logits; no labels)",
    "calib": "the AudioSet genre logits calibrated (a scale and a bias per genre) on the "
             "run's training tracks only",
    "committed": "the committed genre head (models/efficientat-mn04-genre-head.json, "
                 "trained on every track)",
}


def recipe_words(r):
    kd = (f"loss {1 - r.alpha:g} x T^2 x KL(teacher || student) at temperature T = "
          f"{r.temperature:g} + {r.alpha:g} x cross-entropy with the true genre (on chunks of "
          "labelled tracks)" if r.alpha else
          f"loss T^2 x KL(teacher || student) at temperature T = {r.temperature:g} (the true "
          "labels unused)")
    return (f"design ({r.arch}) distilled from the backbone with {HEAD_WORDS[r.head]}; {kd}; "
            f"{r.epochs} epochs of {r.epoch_chunks} chunks, {1 - r.mix_share - r.unl_share:g} "
            f"of them from the tracks (class-balanced, genre weight n_tracks^{1 - r.balance:g}; "
            f"each track as it is, as a 128 kbit/s MP3 and {r.n_fx} random re-recording(s): "
            "gain, EQ, pitch or tempo, MP3), "
            f"{r.mix_share:g} from two-track mixes (of {r.n_mixes} drawn, those whose tracks the "
            "run may learn from)"
            + (f", {r.unl_share:g} from unlabelled music" if r.unl_share else "")
            + f"; training chunks every {r.hop:g} s; batch {r.batch}, AdamW lr "
            f"{r.learning_rate():g} one-cycle, weight decay {r.weight_decay:g}, SpecAugment "
            f"{r.time_masks} x <= {r.time_mask} frames + {r.freq_masks} x <= {r.freq_mask} "
            f"bands, gain +-{r.gain_db:g} dB" + (f", mixup {r.mixup:g}" if r.mixup else "")
            + (f", {r.aux_weight:g} x the squared error against the teacher's z-scored "
               f"{r.aux.replace(',', ' and ')}" if r.aux else "")
            + f"; seed {r.seed}.")


def add_recipe_args(ap):
    defaults = Recipe()
    for f in dataclasses.fields(Recipe):
        d = getattr(defaults, f.name)
        ap.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=type(d), default=d)


def recipe_from_args(args):
    return Recipe(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Recipe)})


def brief(ev):
    return {"track_accuracy_votes": ev["votes"]["accuracy"],
            "track_accuracy_mean_prob": ev["mean_prob"]["accuracy"],
            "balanced_accuracy_votes": ev["votes"]["balanced_accuracy"],
            "chunk_accuracy": ev["chunk"]["accuracy"]}


def add_world_args(ap):
    """The options that say where the data, genred, the teacher and the cache are."""
    ap.add_argument("--data", required=True)
    ap.add_argument("--genred", required=True)
    ap.add_argument("--checkpoint", default=teachers.CHECKPOINT)
    ap.add_argument("--cache", default=os.path.join(HERE, ".cache"))


def emit(result, path=None):
    """Prints result as one JSON line, and appends it to path if given."""
    print(json.dumps(result), flush=True)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(result) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_world_args(ap)
    ap.add_argument("--music", default="", help="a folder of unlabelled music (music.py fetch)")
    ap.add_argument("--cv", type=int, default=0)
    ap.add_argument("--json", help="append the result as one JSON line here")
    ap.add_argument("--tag", default="", help="a name for this run in --json")
    add_recipe_args(ap)
    args = ap.parse_args()
    recipe = recipe_from_args(args)
    music = ()
    if args.music:
        import music as music_mod
        music = tuple(music_mod.files(args.music))
    ctx = Context(data=args.data, genred=args.genred, checkpoint=args.checkpoint,
                  cache=args.cache, jobs=args.threads, music=music)
    log = lambda s: print(s, flush=True)  # noqa: E731
    genres, tracks = dataset.discover(args.data)
    train_t, valid_t = dataset.split(args.data, tracks, seed=args.seed)
    world = World(ctx, recipe, genres, train_t + valid_t, log)
    t0 = time.time()
    if args.cv > 1:
        res = cross_validate(world, recipe, train_t + valid_t, args.cv, log)
        result = {"cv": {who: {k: v for k, v in res[who].items() if not k.startswith("out_of")}
                         for who in ("student", "teacher")}}
    else:
        if recipe.head == "committed":
            raise SystemExit("--head committed saw valid.txt: it cannot be scored there")
        _, _, _, ev, tev, _, secs, summary = run(world, recipe, train_t, valid_t, log)
        result = {"valid": {"student": brief(ev), "teacher": brief(tev)}, "pool": summary}
    result.update(tag=args.tag, recipe=dataclasses.asdict(recipe), seconds=round(time.time() - t0),
                  music=len(music))
    emit(result, args.json)


if __name__ == "__main__":
    main()
