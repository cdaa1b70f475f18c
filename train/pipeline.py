#!/usr/bin/python3
"""The whole training pipeline behind the bundled model; train/reproduce runs
it with the defaults that made models/gtzan-cnn.gmodel.

  1. features: `genred features` for every track (dataset.py, cached), and
     with a teacher (--teacher, the default) every source the student
     learns from, rendered, with the teacher's outputs (distill.World);
  2. the student distilled (distill.py; --teacher none: train.py's
     true-label recipe) on train.txt, with a teacher head fitted on
     train.txt alone, scored on valid.txt beside the teacher, with
     --valid-seeds seeds; 2b. other sizes of the student the same way
     (--sizes);
  3. 5-fold cross-validation of the same recipe over train + valid, each
     fold's teacher head fitted on its training folds;
  4. the shipped model: the same recipe on train + valid (the committed
     genre head of the backbone when there is one), exported to models/
     (the numbers to quote for it are 2 and 3);
  5. design (d), the raw-waveform softmax autoencoder, the same way (valid.txt
     score, then trained on everything), exported as an alternative model;
  6. the daemon's own view: `genred serve` reports parameters and MFLOPs of
     the files; `genred classify` answers the valid.txt tracks as WAV and
     as 128 kbit/s MP3 with the valid.txt model (agreement, and a check that
     the daemon's answers equal PyTorch's);
  7. docs/model-card.md and its PNG (card.py), from train/results/model-card.json.

What it does not do: choose the design. That was done on valid.txt by
train/compare.py (see the card's "Designs compared"); this file trains the
winner.
"""
import argparse
import dataclasses
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train  # noqa: E402  (sets OMP_WAIT_POLICY before torch loads)
import card  # noqa: E402
import dataset  # noqa: E402
import distill  # noqa: E402
import evaluate  # noqa: E402
import models  # noqa: E402
import teacher as teachers  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = os.path.dirname(train.HERE)
TITLES = {
    "a": "4 x conv 3x3 growing to 512 channels, 3 dense layers, dropout 0.6",
    "b": "5 x [conv 5x5 + BN + ReLU + max-pool], 8-128 filters, dropout 0.2",
    "c": "FCN-5 in the style of Choi et al., global max pool",
    "d": "deep softmax autoencoder on the raw waveform (500 -> 64 -> 500, softmax on the code)",
    "e": "small all-convolutional CNN: 2x2 average pool, 5 x conv 3x3 (16-128), global "
         "average pool, dropout 0.5",
    **{k: f"design (e) at {w:g} x its width" for k, w in models.E_WIDTHS.items()},
}


class Daemon:
    """`genred serve` on 127.0.0.1, an ephemeral port, for GET /v1/model."""

    def __init__(self, genred, model):
        self.proc = subprocess.Popen([genred, "serve", "--listen", "127.0.0.1", "--port", "0",
                                      "--model", model, "--workers", "1"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                     env=dataset.genred_env())
        line = self.proc.stdout.readline()
        m = re.search(r"listening on (https?://127\.0\.0\.1:\d+)", line)
        if not m:
            self.close()
            raise RuntimeError(f"genred serve did not start: {line!r}")
        self.url = m.group(1)

    def get(self, path):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.load(r)

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def describe(genred, model_path):
    d = Daemon(genred, model_path)
    try:
        return d.get("/v1/model")
    finally:
        d.close()


def render(src, fmt, dst):
    """src re-encoded by ffmpeg as 16-bit WAV or 128 kbit/s MP3."""
    codec = ["-c:a", "pcm_s16le"] if fmt == "wav" else ["-c:a", "libmp3lame", "-b:a", "128k"]
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", src, *codec, dst],
                   check=True, capture_output=True)


def classify(genred, model_path, files):
    """One `genred classify` answer per file, in order."""
    out = []
    for i in range(0, len(files), 32):
        r = subprocess.run([genred, "classify", "--model", model_path,
                            *files[i:i + 32]], capture_output=True, text=True, timeout=1800,
                           env=dataset.genred_env())
        if r.returncode != 0:
            raise RuntimeError(f"genred classify failed: {r.stderr.strip() or r.stdout[-500:]}")
        out += [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    if len(out) != len(files):
        raise RuntimeError(f"genred classify answered {len(out)} of {len(files)} files")
    return out


def daemon_agreement(genred, model_path, tracks, genres, ev):
    """WAV vs MP3 answers of the daemon for tracks, and whether its WAV
    answers match PyTorch's (ev: evaluate_probs of the same model)."""
    with tempfile.TemporaryDirectory(prefix="genred-agree-") as tmp:
        wavs, mp3s = [], []
        for t in tracks:
            wavs.append(os.path.join(tmp, t.id + ".wav"))
            mp3s.append(os.path.join(tmp, t.id + ".mp3"))
            render(t.path, "wav", wavs[-1])
            render(t.path, "mp3", mp3s[-1])
        a, b = classify(genred, model_path, wavs), classify(genred, model_path, mp3s)
    diff = [float(np.mean([abs(x["probability"] - {g["genre"]: g["probability"]
                                                    for g in y["genres"]}[x["genre"]])
                           for x in wa["genres"]])) for wa, y in zip(a, b)]
    torch_top = [genres[i] for i in ev["track_pred_votes"]]
    return {
        "tracks": len(tracks), "model": "the valid.txt model",
        "top_agreement": float(np.mean([x["top"] == y["top"] for x, y in zip(a, b)])),
        "mean_abs_prob_diff": float(np.mean(diff)),
        "matches_pytorch": float(np.mean([x["top"] == t for x, t in zip(a, torch_top)])),
        "wav_accuracy": float(np.mean([x["top"] == t.genre for x, t in zip(a, tracks)])),
        "mp3_accuracy": float(np.mean([y["top"] == t.genre for y, t in zip(b, tracks)])),
        "inference_ms_per_chunk": float(statistics.median(
            x["timing_ms"]["inference"] / x["chunks"] for x in a)),
    }


def cv_mp3_agreement(ctx, recipe, genres, tracks, cv_models):
    """Out-of-fold: each track's MP3 (genred features of the 'mp3' variant)
    scored by the CV model that did not see it, against its original."""
    same, n = 0, 0
    for (model, mean, std), test_t in cv_models:
        paths = dataset.extract(ctx.genred, train.PARAMS[recipe.kind()], test_t, ctx.cache,
                                ctx.jobs, variant="mp3")
        X, y, owner = dataset.load_chunks(test_t, paths)
        Xo, yo, oo = train.eval_chunks(ctx, recipe.kind(), test_t)
        a = evaluate.track_scores(train.predict(model, Xo, mean, std), oo, len(test_t))[0]
        b = evaluate.track_scores(train.predict(model, X, mean, std), owner, len(test_t))[0]
        same += int((a.argmax(1) == b.argmax(1)).sum())
        n += len(test_t)
    return {"tracks": n, "top_agreement": same / max(n, 1)}


class Learner:
    """The student's recipe behind one interface: distill.py's (the teacher's
    soft targets, world holds what it learns from) or, with world None,
    train.py's (the true labels alone). Teacher scores and heads of every
    run are kept for the card."""

    def __init__(self, ctx, world, recipe, genres, log):
        self.ctx, self.world, self.recipe, self.genres, self.log = ctx, world, recipe, genres, log
        self.teacher_evals, self.heads, self.pools = [], [], []

    def run(self, recipe, fit_tracks, test_tracks):
        """(model, mean, std, evaluation or None, training seconds)."""
        if self.world is None:
            return train.train_and_evaluate(self.ctx, recipe, self.genres, fit_tracks,
                                            test_tracks, self.log)
        model, mean, std, ev, tev, head, secs, pool = distill.run(self.world, recipe, fit_tracks,
                                                                  test_tracks, self.log)
        self.teacher_evals.append(tev)
        self.heads.append(head)
        self.pools.append(pool)
        return model, mean, std, ev, secs

    def cross_validate(self, tracks, k, keep):
        if self.world is None:
            return train.cross_validate(self.ctx, self.recipe, self.genres, tracks, k, self.log,
                                        keep=keep)
        res = distill.cross_validate(self.world, self.recipe, tracks, k, self.log, keep=keep)
        self.teacher_cv = {key: v for key, v in res["teacher"].items()
                           if not key.startswith("out_of_fold")}
        self.teacher_cv["out_of_fold_votes"] = res["teacher"]["out_of_fold_votes"]
        out = {key: res[key] for key in ("k", "tracks", "stratified_by", "artist_aware")}
        out["folds"] = [{"fold": f["fold"], "tracks": f["tracks"],
                         "train_seconds": f["train_seconds"], **f["student"]}
                        for f in res["folds"]]
        out.update(res["student"])
        return out


def previous_models(name, version):
    """The earlier bundled models' scores (train/results/<name>-<version>.json,
    kept when a new version ships), oldest first, for the card's comparison."""
    folder = os.path.join(train.HERE, "results")
    found = []
    for f in os.listdir(folder):
        m = re.fullmatch(re.escape(name) + r"-(\d+)\.(\d+)\.(\d+)\.json", f)
        if m and f != f"{name}-{version}.json":
            with open(os.path.join(folder, f)) as fh:
                found.append((tuple(int(x) for x in m.groups()), json.load(fh)))
    return [b for _, b in sorted(found, key=lambda p: p[0])]


def recipe_words(r):
    if isinstance(r, distill.Recipe):
        return distill.recipe_words(r)
    v = ", ".join(x for x in r.variants if x != "orig")
    return (f"design ({r.arch}), {r.epochs} epochs of {r.epoch_chunks} chunks drawn "
            f"class-balanced (genre weight n_tracks^{1 - r.balance:g}), batch {r.batch}, AdamW "
            f"lr {r.learning_rate():g} one-cycle, weight decay {r.weight_decay:g}, label smoothing "
            f"{r.label_smoothing:g}, mixup {r.mixup:g}, SpecAugment {r.time_masks} x <= "
            f"{r.time_mask} frames + {r.freq_masks} x <= {r.freq_mask} bands, gain +-{r.gain_db:g} dB; "
            f"training chunks every {r.chunk_hop:g} s from the original audio"
            + (f" and re-recordings ({v})" if v else "") + f"; seed {r.seed}.")


def split_words(genres, train_t, valid_t):
    def counts(ts):
        return ", ".join(f"{g} {sum(t.genre == g for t in ts)}" for g in genres)
    return f"train.txt has {counts(train_t)}; valid.txt has {counts(valid_t)}."


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--genred", required=True)
    ap.add_argument("--cache", default=os.path.join(train.HERE, ".cache"))
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "gtzan-cnn.gmodel"))
    ap.add_argument("--dsae-model", default=os.path.join(ROOT, "models", "gtzan-dsae.gmodel"))
    ap.add_argument("--card", default=os.path.join(ROOT, "docs", "model-card.md"))
    ap.add_argument("--png", default=os.path.join(ROOT, "docs", "model-card-confusion.png"))
    ap.add_argument("--results", default=os.path.join(train.HERE, "results", "model-card.json"))
    ap.add_argument("--designs", default=os.path.join(train.HERE, "results", "designs.json"))
    ap.add_argument("--cv", type=int, default=5)
    ap.add_argument("--valid-seeds", type=int, default=3,
                    help="train the valid.txt model with this many seeds (seed, seed+1, ...); "
                         "the first one's details are shown, all of their spread")
    ap.add_argument("--name", help="the shipped model's name (default: --model's file name "
                    "without .gmodel)")
    ap.add_argument("--version", default="3.1.0")
    ap.add_argument("--dsae-epochs", type=int, default=0,
                    help="design (d)'s epochs; 0: train.dsae_recipe's")
    ap.add_argument("--command", default="train/reproduce",
                    help="how this run was started, for the card")
    ap.add_argument("--teacher", default=teachers.CHECKPOINT,
                    help="the backbone checkpoint the student learns from (distill.py); "
                    "'none': design (e) on the true labels alone (train.py), for data whose "
                    "genres the backbone does not know")
    ap.add_argument("--sizes", default="e_s,e",
                    help="student sizes (train/models.py) scored on valid.txt for the card; "
                    "'': none")
    ap.add_argument("--music", default="",
                    help="a folder of unlabelled music for the student (music.py fetch)")
    known, _ = ap.parse_known_args()
    distilling = known.teacher != "none"
    (distill if distilling else train).add_recipe_args(ap)
    args = ap.parse_args()
    args.name = args.name or os.path.splitext(os.path.basename(args.model))[0]
    t_start = time.time()
    recipe = (distill if distilling else train).recipe_from_args(args)
    # Design (d) keeps train.py's budget: the student's long one is for the
    # student's many teacher-labelled chunks.
    dsae = train.dsae_recipe(recipe if not distilling else train.Recipe(
        seed=recipe.seed, threads=recipe.threads))
    if args.dsae_epochs:
        dsae.epochs = args.dsae_epochs
    ctx = train.Context(data=args.data, genred=args.genred, cache=args.cache, jobs=recipe.threads)
    log = lambda s: print(f"[{time.time() - t_start:7.1f} s] {s}", flush=True)  # noqa: E731
    genres, tracks = dataset.discover(args.data)
    train_t, valid_t = dataset.split(args.data, tracks, seed=recipe.seed)
    everything = train_t + valid_t
    has_lists = all(os.path.exists(os.path.join(args.data, f)) for f in ("train.txt", "valid.txt"))
    per_genre = {g: sum(t.genre == g for t in everything) for g in genres}
    starved = [g for g in genres if sum(t.genre == g for t in train_t) <= 2
               and sum(t.genre == g for t in valid_t) >= 5]
    log(f"{len(genres)} genres, {len(train_t)} train / {len(valid_t)} valid tracks")
    timing = {}

    # 1. Features, all of them up front (cached across runs).
    # Per audio variant, every (params, hop) needed: training chunks of both
    # designs, back-to-back chunks of the original for evaluation and of the
    # MP3 for the WAV/MP3 agreement. Each re-recording is made once.
    t = time.time()
    plan = {}
    for rec in ((dsae,) if distilling else (recipe, dsae)):
        for v in rec.variants:
            plan.setdefault(v, set()).add((train.PARAMS[rec.kind()], rec.chunk_hop))
        plan.setdefault("orig", set()).add((train.PARAMS[rec.kind()], None))
    plan.setdefault("mp3", set()).add((train.PARAMS[recipe.kind()], None))
    for v, targets in plan.items():
        dataset.extract_many(ctx.genred, sorted(targets, key=str), everything, ctx.cache,
                             ctx.jobs, v)
    world = None
    if distilling:
        music = ()
        if args.music:
            import music as music_mod
            music = tuple(music_mod.files(args.music))
        dctx = distill.Context(data=args.data, genred=args.genred, checkpoint=args.teacher,
                               cache=args.cache, jobs=recipe.threads, music=music)
        world = distill.World(dctx, recipe, genres, everything, log)
    timing["features_s"] = time.time() - t
    log(f"features ready ({timing['features_s']:.0f} s)")
    learner = Learner(ctx, world, recipe, genres, log)

    with tempfile.TemporaryDirectory(prefix="genred-pipeline-") as tmp:
        # 2. valid.txt, with more seeds to show how much of it is luck
        t = time.time()
        model, mean, std, valid_ev, secs = learner.run(recipe, train_t, valid_t)
        seed_runs = [valid_ev]
        for k in range(1, args.valid_seeds):
            other = dataclasses.replace(recipe, seed=recipe.seed + k)
            seed_runs.append(learner.run(other, train_t, valid_t)[3])
        valid_model = os.path.join(tmp, "valid.gmodel")
        train.export(valid_model, model, genres, recipe, mean, std, {"trained_on": "train.txt"},
                     args.name + "-valid", args.version)
        timing["valid_s"] = time.time() - t

        # 2b. the student's size against accuracy, on valid.txt (same recipe)
        t = time.time()
        sizes = []
        for arch in [a for a in args.sizes.split(",") if a] if distilling else []:
            if arch == recipe.arch:
                m, mn, sd, ev, sec = model, mean, std, valid_ev, secs
            else:
                m, mn, sd, ev, sec = learner.run(dataclasses.replace(recipe, arch=arch),
                                                 train_t, valid_t)
            path = os.path.join(tmp, f"size-{arch}.gmodel")
            train.export(path, m, genres, dataclasses.replace(recipe, arch=arch), mn, sd,
                         {"trained_on": "train.txt"}, f"{args.name}-{arch}", args.version)
            d = describe(args.genred, path)
            sizes.append({"arch": arch, "title": TITLES[arch], "shipped": arch == recipe.arch,
                          "parameters": d["parameters"], "mflops_per_chunk": d["mflops_per_chunk"],
                          "train_seconds": round(sec, 1), **distill.brief(ev)})
        timing["sizes_s"] = time.time() - t

        # 3. cross-validation (models kept for the MP3 agreement)
        t = time.time()
        cv_models = []
        cv = learner.cross_validate(everything, args.cv, cv_models)
        mp3_cv = cv_mp3_agreement(ctx, recipe, genres, everything, cv_models)
        del cv_models
        timing["cv_s"] = time.time() - t

        # 4. the shipped model
        t = time.time()
        shipped_recipe = recipe
        if distilling and teachers.committed_head() is not None:
            # Only the shipped model may learn from the head that saw valid.txt.
            shipped_recipe = dataclasses.replace(recipe, head="committed")
        model_all, mean_all, std_all, _, secs_all = learner.run(shipped_recipe, everything, [])
        meta = {
            "dataset": os.path.basename(os.path.normpath(args.data)),
            "trained_on": f"train.txt + valid.txt ({len(everything)} tracks)",
            "recipe": dataclasses.asdict(shipped_recipe), "train_seconds": round(secs_all, 1),
            **({"teacher": {**world.teacher.describe(),
                            "genre_head": learner.heads[-1].get("training", {})}}
               if distilling else {}),
            "valid_txt_same_recipe_trained_on_train_txt": {
                "track_accuracy_votes": valid_ev["votes"]["accuracy"],
                "track_accuracy_mean_prob": valid_ev["mean_prob"]["accuracy"],
                "balanced_accuracy_votes": valid_ev["votes"]["balanced_accuracy"],
                "chunk_accuracy": valid_ev["chunk"]["accuracy"]},
            "cross_validation": {"k": args.cv, "artist_aware": False,
                                 "track_accuracy_votes": cv["track_accuracy_votes"],
                                 "balanced_accuracy_votes": cv["balanced_accuracy_votes"]},
            "model_card": "docs/model-card.md",
            "date": time.strftime("%Y-%m-%d"),
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.model)), exist_ok=True)
        train.export(args.model, model_all, genres, recipe, mean_all, std_all, meta, args.name,
                     args.version)
        timing["final_s"] = time.time() - t
        log(f"wrote {args.model}")

        # 5. design (d)
        t = time.time()
        dm, dmean, dstd, dsae_ev, _ = train.train_and_evaluate(ctx, dsae, genres, train_t, valid_t, log)
        dm_all, dmean_all, dstd_all, _, dsecs = train.train_and_evaluate(ctx, dsae, genres,
                                                                         everything, [], log)
        dmeta = {"dataset": meta["dataset"], "trained_on": meta["trained_on"],
                 "recipe": dataclasses.asdict(dsae), "train_seconds": round(dsecs, 1),
                 "reconstruction_weight": models.RECONSTRUCTION_WEIGHT,
                 "valid_txt_same_recipe_trained_on_train_txt": {
                     "track_accuracy_votes": dsae_ev["votes"]["accuracy"],
                     "balanced_accuracy_votes": dsae_ev["votes"]["balanced_accuracy"],
                     "chunk_accuracy": dsae_ev["chunk"]["accuracy"]},
                 "date": meta["date"]}
        train.export(args.dsae_model, dm_all, genres, dsae, dmean_all, dstd_all, dmeta,
                     args.name.replace("cnn", "dsae") if "cnn" in args.name else args.name + "-dsae",
                     args.version)
        timing["dsae_s"] = time.time() - t
        log(f"wrote {args.dsae_model}")

        # 6. the daemon's view
        t = time.time()
        info, dinfo = describe(args.genred, args.model), describe(args.genred, args.dsae_model)
        tinfo = describe(args.genred, world.teacher.model) if distilling else None
        agree = daemon_agreement(args.genred, valid_model, valid_t, genres, valid_ev)
        log(f"daemon: WAV/MP3 agreement {agree['top_agreement']:.3f}, matches PyTorch "
            f"{agree['matches_pytorch']:.3f}")

    shipped = {
        "name": args.name, "version": args.version, "path": os.path.relpath(args.model, ROOT),
        "arch": recipe.arch, "title": TITLES[recipe.arch], "input": info["input"],
        "input_words": "log-mel chunks (128 mel bands x 128 frames, 3 s at 16 kHz)"
        if recipe.kind() == "logmel" else "waveform envelopes",
        "parameters": info["parameters"], "mflops_per_chunk": info["mflops_per_chunk"],
        "file_bytes": os.path.getsize(args.model),
        "trained_on": f"all {len(everything)} tracks of {meta['dataset']} train.txt + valid.txt "
                      "(unlisted.txt left out)",
        "inference_ms_per_chunk": agree["inference_ms_per_chunk"],
    }
    vv, vm = valid_ev["votes"]["accuracy"], valid_ev["mean_prob"]["accuracy"]
    cvv, cvm = cv["track_accuracy_votes"]["mean"], cv["track_accuracy_mean_prob"]["mean"]
    daemon = ("The daemon's `top` uses votes (ties broken by mean probability) and reports "
              "both per genre.")
    if (vm > vv and cvm > cvv) or (vm < vv and cvm < cvv):
        agg = f"Both estimates favour {'mean probability' if vm > vv else 'votes'}. {daemon}"
    else:
        agg = f"The two estimates do not agree on a winner: the difference is noise. {daemon}"
    results = {
        "genres": genres,
        "command": args.command,
        "recipe": dataclasses.asdict(recipe), "recipe_words": recipe_words(recipe),
        "valid": {**{k: valid_ev[k] for k in ("votes", "mean_prob", "chunk")},
                  "train_tracks": len(train_t),
                  "seeds": [recipe.seed + k for k in range(len(seed_runs))],
                  "by_seed": {key: [e[m]["accuracy" if key != "balanced_accuracy_votes"
                                         else "balanced_accuracy"] for e in seed_runs]
                              for key, m in (("track_accuracy_votes", "votes"),
                                             ("track_accuracy_mean_prob", "mean_prob"),
                                             ("balanced_accuracy_votes", "votes"),
                                             ("chunk_accuracy", "chunk"))}},
        "cv": {k: v for k, v in cv.items() if k != "track_ids"},
        "shipped": shipped,
        "agreement": {"daemon": agree, "cv": mp3_cv},
        "aggregation_words": agg,
        "valid_words": split_words(genres, train_t, valid_t),
        "split_words": (
            "the lists come with the data (train.txt, valid.txt); for GTZAN they are the "
            "artist-filtered split, so no artist is on both sides."
            if has_lists else "a seeded per-genre split of the tracks (the data has no lists)."),
        "dsae": {
            "path": os.path.relpath(args.dsae_model, ROOT),
            "words": (f"{TITLES['d']}, on genred's waveform envelopes (500 values per 3 s "
                      "chunk: mean |x| over blocks of 96 samples, src/waveform.c); loss "
                      f"{1 - models.RECONSTRUCTION_WEIGHT:g} x cross-entropy + "
                      f"{models.RECONSTRUCTION_WEIGHT:g} x reconstruction MSE, "
                      f"{dsae.epochs} epochs, trained on all {len(everything)} tracks for the "
                      "file; the score below is the same recipe trained on train.txt."),
            "valid": {k: dsae_ev[k] for k in ("votes", "mean_prob", "chunk")},
            "parameters": dinfo["parameters"], "mflops_per_chunk": dinfo["mflops_per_chunk"],
        },
        "data_words": (
            f"`{args.data}`: {len(everything)} tracks used ("
            + split_words(genres, train_t, valid_t) + ") "
            + (f"{len(tracks) - len(everything)} more are in no list and unused. "
               if len(tracks) > len(everything) else "")
            + "Tracks named in unlisted.txt (for GTZAN, the excerpts with known faults) are "
            "never used. For gtzan16k: 30-second GTZAN excerpts (many classical ones 15 s), "
            "16 kHz mono FLAC, in the artist-filtered (fault-filtered) split of Kereliuk, "
            "Sturm & Larsen 2015 restricted to the tracks present; that split's test partition "
            "is held back from the folder, so no number here is on it."),
        "limitations": [
            f"Small, imbalanced data: {len(everything)} tracks, from "
            f"{min(per_genre.values())} ({min(per_genre, key=per_genre.get)}) to "
            f"{max(per_genre.values())} ({max(per_genre, key=per_genre.get)}) per genre. "
            "Per-genre numbers for the small genres rest on a handful of tracks and move by "
            "10 points or more with one track.",
        ] + ([
            f"{', '.join(starved)}: at most 2 training tracks each but 5 or more validation "
            "tracks, so the valid.txt figure mostly measures how the model guesses genres it "
            "barely saw. The shipped model was trained on both lists."] if starved else []) + [
            "Cross-validation is not artist-aware (GTZAN's artist labels are not part of the "
            "lists), so it is optimistic wherever an artist has several tracks.",
            "GTZAN is 1990s-2000s radio and CD excerpts; modern production, other genres "
            "(rap vs. hip-hop, Brazilian funk, ...), live recordings and speech are out of "
            f"distribution. Anything is forced into one of the {len(genres)} labels.",
            "The design and recipe were chosen on valid.txt (train/compare.py); the CV estimate "
            "is the check on that choice.",
        ],
    }
    if distilling:
        tv = learner.teacher_evals[0]
        results["teacher"] = {
            **world.teacher.describe(),
            "valid_head": distill.HEAD_WORDS[recipe.head],
            "shipped_head": distill.HEAD_WORDS[shipped_recipe.head],
            "valid": {k: tv[k] for k in ("votes", "mean_prob", "chunk")},
            "cv": learner.teacher_cv,
            "valid_pool": learner.pools[0],
            "music": [os.path.basename(f) for f in world.ctx.music],
            "sizes": sizes,
            "sources": len(world.sources) + len(world.music_sources),
            "sources_rendered": world.rendered,
            **{k: tinfo[k] for k in ("parameters", "mflops_per_chunk")},
        }
        if args.music:
            import music as music_mod
            results["teacher"]["music_packages"] = music_mod.packages(args.music)
        results["baselines"] = previous_models(args.name, args.version)
        results["limitations"][-1] = (
            "The recipe was chosen on valid.txt (train/results/distill.md); the CV estimate "
            "is the check on that choice. Both teachers' heads are fitted on the run's own "
            "training tracks, so neither estimate saw its test tracks through the teacher.")
    timing["eval_s"] = time.time() - t
    timing["total_s"] = time.time() - t_start
    timing["load_avg"] = os.getloadavg()[0]
    results["timing"] = {k: round(v, 1) for k, v in timing.items()}
    os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
    with open(args.results, "w") as f:
        json.dump(results, f, indent=1)
    designs = None
    if args.designs and os.path.exists(args.designs):
        with open(args.designs) as f:
            designs = json.load(f)
    card.draw(args.png, [("valid.txt (held out), votes", valid_ev["votes"]["confusion"]),
                         (f"{args.cv}-fold CV, out of fold, votes",
                          cv["out_of_fold_votes"]["confusion"])], genres)
    with open(args.card, "w") as f:
        f.write(card.render(results, designs, os.path.relpath(args.png, os.path.dirname(
            os.path.abspath(args.card)))))
    log(f"wrote {args.card}; total {timing['total_s'] / 60:.1f} min")


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
