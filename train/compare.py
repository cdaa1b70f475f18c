#!/usr/bin/python3
"""Compares network designs on the same split with the same recipe and budget;
writes train/results/designs.json, which the model card shows.

    /usr/bin/python3 train/compare.py --data ../shared/data/gtzan16k \\
        --genred build/genred [--archs a,b,c,d,e] [recipe options of train.py]

Every design is trained on train.txt and scored on valid.txt (held out, no
checkpoint picked). Parameters and MFLOPs per chunk are what the daemon
reports for the exported file (GET /v1/model). Design (d) reads the waveform
and gets its own recipe (train.dsae_recipe: no spectrogram masks, no mixup,
half-balanced sampling, 200 short epochs); the CNNs share one. One run at a time: on a shared 2-core CPU this takes a while (design
(a) alone is ~7x the cost of (e) per chunk).

What it does not do: pick the winner for you; the conclusion line is written
by hand into the results (--conclusion).
"""
import argparse
import dataclasses
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train  # noqa: E402  (sets OMP_WAIT_POLICY before torch loads)
import dataset  # noqa: E402
import pipeline  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--genred", required=True)
    ap.add_argument("--cache", default=os.path.join(train.HERE, ".cache"))
    ap.add_argument("--archs", default="a,b,c,d,e")
    ap.add_argument("--out", default=os.path.join(train.HERE, "results", "designs.json"))
    ap.add_argument("--conclusion", default="")
    ap.add_argument("--note", default="")
    train.add_recipe_args(ap)
    args = ap.parse_args()
    base = train.recipe_from_args(args)
    ctx = train.Context(data=args.data, genred=args.genred, cache=args.cache, jobs=base.threads)
    genres, tracks = dataset.discover(args.data)
    train_t, valid_t = dataset.split(args.data, tracks, seed=base.seed)
    old = {}
    if os.path.exists(args.out):
        with open(args.out) as f:
            old = {r["arch"]: r for r in json.load(f).get("runs", [])}
    runs = []
    for arch in args.archs.split(","):
        recipe = train.dsae_recipe(base) if arch == "d" else dataclasses.replace(base, arch=arch)
        model, mean, std, ev, secs = train.train_and_evaluate(ctx, recipe, genres, train_t,
                                                              valid_t, lambda s: print(s, flush=True))
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "m.gmodel")
            train.export(path, model, genres, recipe, mean, std, {}, "compare-" + arch, "0")
            info = pipeline.describe(args.genred, path)
        runs.append({
            "arch": arch, "title": pipeline.TITLES[arch], "input": recipe.kind(),
            "parameters": info["parameters"], "mflops_per_chunk": info["mflops_per_chunk"],
            "track_accuracy_votes": ev["votes"]["accuracy"],
            "track_accuracy_mean_prob": ev["mean_prob"]["accuracy"],
            "balanced_accuracy_votes": ev["votes"]["balanced_accuracy"],
            "chunk_accuracy": ev["chunk"]["accuracy"],
            "train_seconds": round(secs, 1), "recipe": dataclasses.asdict(recipe),
        })
        old[arch] = runs[-1]
        # Written after every design, so a long comparison can be resumed
        # design by design (--archs).
        result = {
            "split": "train.txt -> valid.txt", "seed": base.seed,
            "budget_words": f"{base.epochs} epochs x {base.epoch_chunks} chunks",
            "command": "train/compare.py " + " ".join(sys.argv[1:]),
            "note": args.note, "conclusion": args.conclusion,
            "runs": [old[a] for a in sorted(old)],
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"{arch}: {json.dumps(runs[-1])}", flush=True)


if __name__ == "__main__":
    main()
