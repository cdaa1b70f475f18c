"""torch_backbone.py - the pretrained backbone in PyTorch, what genred's C
engine is compared with (bench/run.py, benchmark "backbone").

    /usr/bin/python3 bench/torch_backbone.py CHECKPOINT SONG FEATURES.npy REPS THREADS

- Inference on the very chunks genred analyses (FEATURES.npy, written by
  `genred features --model <backbone>` for SONG): our PyTorch definition
  (train/efficientat.py, the checkpoint read with torch.load) in batches of 8,
  as genred's max_batch, and all chunks at once, under torch.inference_mode()
  on THREADS threads.
- The whole pipeline a PyTorch user would write: torchaudio.load, downmix by
  the mean of the channels, resample to 32 kHz, the trim rule, the front end
  (train/efficientat.py front_end: pre-emphasis, torch.stft, Kaldi mel banks)
  and the network on all chunks at once.

Each is timed REPS times after one warm-up run; prints one JSON object of
medians in milliseconds, wall and CPU (the process's, all threads: on a
loaded machine wall time stretches, the CPU a run needs much less).

What it does not do: the genre head (a 384 x 10 matrix product: nothing to
measure), HTTP.
"""
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torchaudio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "train"))
import efficientat  # noqa: E402

TRIM_START_S, TRIM_END_S, TRIM_MIN_KEEP_S = 15.0, 15.0, 30.0
BATCH = 8


def timed(fn, reps):
    """Median wall and CPU milliseconds of fn()."""
    fn()
    wall, cpu = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return statistics.median(wall), statistics.median(cpu)


def main():
    ckpt, song, feats, reps, threads = sys.argv[1:6]
    reps, threads = int(reps), int(threads)
    torch.set_num_threads(threads)
    net = efficientat.load_checkpoint(ckpt)
    x = torch.from_numpy(np.load(feats))[:, None]

    def batched():
        with torch.inference_mode():
            for i in range(0, len(x), BATCH):
                net(x[i:i + BATCH])

    def at_once():
        with torch.inference_mode():
            net(x)

    def pipeline():
        wave, rate = torchaudio.load(song)
        wave = torchaudio.functional.resample(wave.mean(0), rate, 32000)
        seconds = wave.numel() / 32000
        if seconds - TRIM_START_S - TRIM_END_S >= TRIM_MIN_KEEP_S:
            wave = wave[int(TRIM_START_S * 32000):wave.numel() - int(TRIM_END_S * 32000)]
        n = wave.numel() // 96000
        with torch.inference_mode():
            net(efficientat.front_end(wave[:n * 96000].reshape(n, 96000)))

    out = {"chunks": len(x), "threads": threads, "batch": BATCH,
           "torch": torch.__version__, "torchaudio": torchaudio.__version__}
    for name, fn in (("inference_batched", batched), ("inference_at_once", at_once),
                     ("pipeline", pipeline)):
        out[name + "_ms"], out[name + "_cpu_ms"] = timed(fn, reps)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
