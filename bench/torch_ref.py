"""torch_ref.py - the PyTorch reference pipeline genred is compared with.

    /usr/bin/python3 bench/torch_ref.py MODEL SONG REPS THREADS

The same song and the same model weights (train/gmodel.py load) through the
pipeline a PyTorch user would write: torchaudio.load (decode), downmix by the
mean of the channels, torchaudio.functional.resample to the model's rate, the
same trim rule, torchaudio's MelSpectrogram + AmplitudeToDB with the model's
feature parameters (one spectrogram of the window, cut into chunks exactly as
genred does: 48000 / 375 = 128 frames per chunk), normalisation, and the
nn.Sequential in eval mode under torch.inference_mode() on all chunks at
once. torch runs on THREADS threads (the cores genred uses).

Each stage is timed REPS times after one warm-up run (which builds the
resampling kernel and the mel filterbank, as genred builds its plans at
start-up); prints one JSON object of medians in milliseconds, plus the
answer (top genre, mean probabilities) so bench/run.py can check that both
pipelines agree.

What it does not do: HTTP, or anything genred-specific beyond the weights.
"""
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torchaudio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "train"))
import gmodel  # noqa: E402

TRIM_START_S, TRIM_END_S, TRIM_MIN_KEEP_S = 15.0, 15.0, 30.0


def main():
    model_path, song, reps, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(threads)
    net, header = gmodel.load(model_path)
    f = header["features"]
    if f.get("kind", "logmel") != "logmel":
        print(json.dumps({"error": "the reference pipeline knows log-mel models only"}))
        return
    rate = f["sample_rate"]
    chunk_frames, hop = f["chunk_frames"], f["hop_length"]
    melspec = torchaudio.transforms.MelSpectrogram(
        sample_rate=rate, n_fft=f["n_fft"], win_length=f["win_length"], hop_length=hop,
        f_min=f["fmin"], f_max=f["fmax"], n_mels=f["n_mels"], power=f["power"],
        norm="slaney" if f["mel_norm"] == "slaney" else None, mel_scale=f["mel_scale"],
        center=True, pad_mode="reflect")
    to_db = torchaudio.transforms.AmplitudeToDB(stype="power" if f["power"] == 2 else "magnitude",
                                                top_db=None)
    to_db.amin = f["amin"]
    # AmplitudeToDB computes 10*log10(max(x, amin)) for power, like genred.
    chunk = chunk_frames * hop

    def run():
        t = [time.perf_counter()]
        wav, sr = torchaudio.load(song)
        t.append(time.perf_counter())
        mono = wav.mean(dim=0)
        if sr != rate:
            mono = torchaudio.functional.resample(mono, sr, rate)
        t.append(time.perf_counter())
        n = mono.shape[0]
        start, end = 0, n
        keep = n / rate - TRIM_START_S - TRIM_END_S
        if keep > 0 and keep >= TRIM_MIN_KEEP_S:
            start, end = int(TRIM_START_S * rate), n - int(TRIM_END_S * rate)
        window = mono[start:end]
        n_chunks = (end - start) // chunk
        spec = to_db(melspec(window))                       # [n_mels, frames]
        spec = (spec - f["norm_mean"]) / f["norm_std"]
        x = spec[:, :n_chunks * chunk_frames].reshape(f["n_mels"], n_chunks, chunk_frames)
        x = x.permute(1, 0, 2).unsqueeze(1).contiguous()    # [chunks, 1, n_mels, frames]
        t.append(time.perf_counter())
        with torch.inference_mode():
            probs = net(x)
        t.append(time.perf_counter())
        return t, probs, n_chunks

    run()  # warm-up
    stages = {"decode_ms": [], "resample_ms": [], "mel_ms": [], "inference_ms": [], "total_ms": []}
    for _ in range(reps):
        t, probs, n_chunks = run()
        stages["decode_ms"].append((t[1] - t[0]) * 1e3)
        stages["resample_ms"].append((t[2] - t[1]) * 1e3)
        stages["mel_ms"].append((t[3] - t[2]) * 1e3)
        stages["inference_ms"].append((t[4] - t[3]) * 1e3)
        stages["total_ms"].append((t[4] - t[0]) * 1e3)
    mean = probs.mean(dim=0)
    out = {k: statistics.median(v) for k, v in stages.items()}
    out.update({"threads": threads, "chunks": n_chunks, "reps": reps,
                "top": header["genres"][int(mean.argmax())],
                "mean_probabilities": [round(float(p), 6) for p in mean],
                "torch": torch.__version__, "torchaudio": torchaudio.__version__})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
