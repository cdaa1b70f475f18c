#!/usr/bin/python3
"""Accuracy against max_chunks: how many of a track's chunks the answer needs.

    /usr/bin/python3 train/max_chunks.py --data ../shared/data/gtzan16k \\
        --genred build/genred [--cv 5] [--out train/results/max-chunks.json]

With max_chunks = N the daemon analyses N chunks spread evenly over the
window, the k-th being chunk floor((2k + 1) n / 2N) of the n it holds
(openapi.yaml), and each is exactly the chunk the full analysis computes
there (tests/test_range_identity.c, tests/test_api.py). So the curve comes
from every chunk's probabilities, scored once per N with the daemon's pick
and its vote (votes, ties broken by the mean probability):

  1. valid.txt: the bundled model's recipe (train.py's defaults, the
     recipe of models/gtzan-cnn.gmodel) trained on train.txt, scored on the
     held-out valid.txt tracks (other artists);
  2. k-fold cross-validation of the same recipe over train + valid, every
     track scored by the fold model that did not see it (not artist-aware);
  3. a check that the curve is the daemon's: the valid.txt model exported
     and run by `genred classify --max-chunks N` on the valid.txt tracks
     must answer the top genre computed here for each of them.

GTZAN's tracks are 30 s excerpts (10 chunks; many classical ones 15 s, 5
chunks), which the trim rule leaves whole: N runs from 1 to 10 here. For
full-length songs (50 chunks) docs/performance.md adds the agreement with
the full analysis on 300 generated songs (bench/run --only catalogue).

What it does not do: choose the recipe (train/compare.py), or make the
bundled model (train/reproduce).
"""
import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train  # noqa: E402  (sets OMP_WAIT_POLICY before torch loads)
import dataset  # noqa: E402
import evaluate  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402


def pick(k, m, n):
    """The daemon's max_chunks pick (features.h features_chunk_pick)."""
    return (2 * k + 1) * n // (2 * m)


def tops(probs, owner, n_tracks, keep):
    """Each track's top genre from at most `keep` of its chunks (0: all)."""
    out = np.zeros(n_tracks, dtype=np.int64)
    for t in range(n_tracks):
        p = probs[owner == t]
        n = len(p)
        m = n if keep == 0 else min(keep, n)
        sel = p[[pick(k, m, n) for k in range(m)]]
        votes, mean = evaluate.track_scores(sel, np.zeros(m, dtype=np.int64), 1)
        out[t] = int(votes.argmax(1)[0])
    return out


def curve(probs, owner, labels, genres, ns):
    labels = np.asarray(labels)
    rows = {}
    for keep in ns:
        pred = tops(probs, owner, len(labels), keep)
        m = evaluate.metrics(labels, pred, genres)
        rows[str(keep)] = {"accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"],
                           "tracks": int(len(labels))}
    return rows


def daemon_check(genred, model_path, tracks, probs, owner, genres, ns):
    """Share of tracks whose `genred classify --max-chunks N` top equals the
    top computed from all chunk probabilities here, per N."""
    files = [t.path for t in tracks]
    out = {}
    for keep in ns:
        r = subprocess.run([genred, "classify", "--model", model_path, "--max-chunks", str(keep),
                            *files], capture_output=True, text=True, timeout=1800,
                           env=dataset.genred_env())
        if r.returncode != 0:
            raise RuntimeError(f"genred classify failed: {r.stderr.strip()}")
        answers = [json.loads(x) for x in r.stdout.splitlines()]
        want = tops(probs, owner, len(tracks), keep)
        same = [a["top"] == genres[w] for a, w in zip(answers, want)]
        out[str(keep)] = float(np.mean(same))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--genred", required=True)
    ap.add_argument("--cache", default=os.path.join(train.HERE, ".cache"))
    ap.add_argument("--cv", type=int, default=5)
    ap.add_argument("--out", default=os.path.join(train.HERE, "results", "max-chunks.json"))
    train.add_recipe_args(ap)
    args = ap.parse_args()
    t_start = time.time()
    log = lambda s: print(f"[{time.time() - t_start:7.1f} s] {s}", flush=True)  # noqa: E731
    recipe = train.recipe_from_args(args)
    ctx = train.Context(data=args.data, genred=args.genred, cache=args.cache, jobs=recipe.threads)
    genres, tracks = dataset.discover(args.data)
    train_t, valid_t = dataset.split(args.data, tracks, seed=recipe.seed)
    everything = train_t + valid_t
    ns = list(range(0, 11))  # 0: every chunk

    # 1. valid.txt
    model, mean, std, ev, _ = train.train_and_evaluate(ctx, recipe, genres, train_t, valid_t, log)
    X, _, owner = train.eval_chunks(ctx, recipe.kind(), valid_t)
    probs = train.predict(model, X, mean, std)
    valid = curve(probs, owner, [t.label for t in valid_t], genres, ns)
    assert abs(valid["0"]["accuracy"] - ev["votes"]["accuracy"]) < 1e-9, "not the daemon's vote"
    with tempfile.TemporaryDirectory(prefix="genred-max-chunks-") as tmp:
        path = os.path.join(tmp, "valid.gmodel")
        train.export(path, model, genres, recipe, mean, std, {"trained_on": "train.txt"},
                     "max-chunks-valid", "0")
        check = daemon_check(args.genred, path, valid_t, probs, owner, genres, [1, 3, 8])
    log(f"valid.txt: {valid}; genred classify agrees: {check}")

    # 2. cross-validation, out of fold
    kept = []
    cv = train.cross_validate(ctx, recipe, genres, everything, args.cv, log, keep=kept)
    fold_curves = []
    for (m, mu, sd), test_t in kept:
        Xf, _, of = train.eval_chunks(ctx, recipe.kind(), test_t)
        fold_curves.append(curve(train.predict(m, Xf, mu, sd), of, [t.label for t in test_t],
                                 genres, ns))
    cv_rows = {}
    for keep in map(str, ns):
        acc = np.array([f[keep]["accuracy"] for f in fold_curves])
        bal = np.array([f[keep]["balanced_accuracy"] for f in fold_curves])
        cv_rows[keep] = {"accuracy_mean": float(acc.mean()), "accuracy_std": float(acc.std(ddof=1)),
                         "balanced_accuracy_mean": float(bal.mean())}
    assert abs(cv_rows["0"]["accuracy_mean"] - cv["track_accuracy_votes"]["mean"]) < 1e-9

    chunks = np.bincount(owner)
    result = {
        "command": " ".join(["train/max_chunks.py"] + sys.argv[1:]),
        "recipe": dataclasses.asdict(recipe),
        "valid": valid, "valid_tracks": len(valid_t),
        "valid_chunks_per_track": {"min": int(chunks.min()), "max": int(chunks.max())},
        "daemon_agrees": check,
        "cv": cv_rows, "cv_k": args.cv, "cv_tracks": len(everything),
        "seconds": round(time.time() - t_start, 1),
        "load_avg_at_end": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print("| max_chunks | valid.txt accuracy | valid.txt balanced | "
          f"{args.cv}-fold CV accuracy (mean +- sd) | CV balanced |")
    print("|---|---|---|---|---|")
    for keep in map(str, ns):
        v, c = valid[keep], cv_rows[keep]
        print(f"| {keep if keep != '0' else 'all'} | {v['accuracy']:.3f} | "
              f"{v['balanced_accuracy']:.3f} | {c['accuracy_mean']:.3f} +- "
              f"{c['accuracy_std']:.3f} | {c['balanced_accuracy_mean']:.3f} |")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
