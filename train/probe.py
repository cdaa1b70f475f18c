#!/usr/bin/python3
"""probe.py - why the distilled student stops where it does. Trains a
student as distill.py does, or a variant of it, and measures on the
train.txt and the valid.txt tracks (the daemon's back-to-back chunks) how
often it agrees with its teacher chunk by chunk, beside its accuracy.

    /usr/bin/python3 train/probe.py --data ../shared/data/gtzan16k \\
        --genred build/genred [--variant e|depthwise|pool1x2|bandnorm] \\
        [--transductive] [distill.py's recipe options] [--json F --tag T]

Variants (training-time only: gmodel.py does not export the depthwise one
and C has no per-band mean layer; they exist to be measured):
    e          design (e), the shipped student;
    depthwise  a MobileNet-v1-like student of depthwise-separable blocks
               (stem 24, then 48-64-64-128-128-256-256), 28 M multiply-adds;
    pool1x2    design (e) with its first pool over time only (2 x the cost);
    bandnorm   design (e) after each mel band's mean over the chunk is
               subtracted (robust to a recording's equaliser).

--transductive lets the student hear valid.txt's audio too, described by the
teacher alone: alpha 0 and balance 0, so no valid.txt label is used, and the
teacher's head is still fitted on train.txt. It is not a score; it bounds
what this student follows once it has heard valid.txt's artists.

What it does not do: ship a model (pipeline.py), choose the recipe
(distill.py's defaults are the shipped one).
"""
import argparse
import dataclasses
import os
import sys
import time

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dataset  # noqa: E402
import distill  # noqa: E402
import evaluate  # noqa: E402
import models  # noqa: E402
import teacher as teachers  # noqa: E402
import train  # noqa: E402


class BandNorm(nn.Module):
    def forward(self, x):
        return x - x.mean(dim=3, keepdim=True)


def depthwise(n_genres, input_shape=(1, 128, 128), stem=24,
              blocks=((48, 1), (64, 2), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1))):
    def bn_relu(c):
        return [nn.BatchNorm2d(c), nn.ReLU()]
    layers, c = [nn.Conv2d(input_shape[0], stem, 3, 2, 1, bias=False), *bn_relu(stem)], stem
    for out, stride in blocks:
        layers += [nn.Conv2d(c, c, 3, stride, 1, groups=c, bias=False), *bn_relu(c),
                   nn.Conv2d(c, out, 1, bias=False), *bn_relu(out)]
        c = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3),
                         nn.Linear(c, n_genres))


def pool1x2(n_genres, input_shape=(1, 128, 128)):
    m = models.arch_e(n_genres, input_shape)
    m[0] = nn.AvgPool2d((1, 2))
    return m


def bandnorm(n_genres, input_shape=(1, 128, 128)):
    return nn.Sequential(BandNorm(), *models.arch_e(n_genres, input_shape))


VARIANTS = {"e": models.arch_e, "depthwise": depthwise, "pool1x2": pool1x2, "bandnorm": bandnorm}


def multiply_adds(model, shape):
    """Multiply-adds of one chunk through model's convolutions and linears."""
    total = [0]

    def hook(m, _, out):
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            total[0] += out.numel() * (m.in_channels // m.groups) * kh * kw
        elif isinstance(m, nn.Linear):
            total[0] += m.in_features * m.out_features
    hooks = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        model.eval()(torch.zeros(1, *shape))
    for h in hooks:
        h.remove()
    return total[0]


def measure(world, model, mean, std, head, tracks):
    """Agreement with the teacher and accuracy on tracks' back-to-back chunks."""
    X, y, owner = world.student_chunks(tracks)
    p = train.predict(model, X, mean, std)
    tp = np.concatenate([teachers.softmax(teachers.apply_head(head, world.track_values[t.id]))
                         for t in tracks])
    if len(tp) != len(p):
        raise RuntimeError(f"{len(p)} student chunks against {len(tp)} of the teacher")
    ev = evaluate.evaluate_probs(p, y, owner, [t.label for t in tracks], world.genres)
    return {"agreement": float((p.argmax(1) == tp.argmax(1)).mean()), **distill.brief(ev)}


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    distill.add_world_args(ap)
    ap.add_argument("--variant", choices=sorted(VARIANTS), default="e")
    ap.add_argument("--transductive", action="store_true")
    ap.add_argument("--plan-seed", type=int, default=1234,
                    help="the seed of the rendered sources (--seed is the training's)")
    ap.add_argument("--json", help="append the result as one JSON line here")
    ap.add_argument("--tag", default="")
    distill.add_recipe_args(ap)
    args = ap.parse_args()
    recipe = distill.recipe_from_args(args)
    if recipe.head == "committed":
        raise SystemExit("--head committed saw valid.txt: the probe scores valid.txt")
    models.ARCHS["probe"], models.LR["probe"] = VARIANTS[args.variant], models.LR["e"]
    recipe = dataclasses.replace(recipe, arch="probe")
    if args.transductive:
        recipe = dataclasses.replace(recipe, alpha=0.0, balance=0.0)
    ctx = distill.Context(data=args.data, genred=args.genred, checkpoint=args.checkpoint,
                          cache=args.cache, jobs=recipe.threads)
    log = lambda s: print(s, flush=True)  # noqa: E731
    genres, tracks = dataset.discover(args.data)
    train_t, valid_t = dataset.split(args.data, tracks, seed=args.plan_seed)
    world = distill.World(ctx, dataclasses.replace(recipe, seed=args.plan_seed), genres,
                          train_t + valid_t, log)
    head = world.head(recipe, train_t)
    pool = distill.Pool(world, recipe, train_t + valid_t if args.transductive else train_t, head)
    t0 = time.time()
    model = distill.fit(recipe, pool, len(genres), log)
    seconds = round(time.time() - t0)
    result = {"tag": args.tag, "variant": args.variant, "transductive": args.transductive,
              "multiply_adds": multiply_adds(model, pool.shape), "chunks": len(pool),
              "train_seconds": seconds, "recipe": dataclasses.asdict(recipe)}
    for name, ts in (("train", train_t), ("valid", valid_t)):
        result[name] = measure(world, model, pool.mean, pool.std, head, ts)
    result["teacher_valid"] = distill.brief(world.teacher_eval(head, valid_t))
    distill.emit(result, args.json)


if __name__ == "__main__":
    main()
