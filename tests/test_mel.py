"""test_mel.py - genred's log-mel chunks (src/mel.c, through the mel_npy tool)
against an independent float64 torchaudio reference.

Reference: torchaudio.transforms.MelSpectrogram(center=True,
pad_mode="reflect") built with float64 as the default dtype (so its window,
filterbank and FFT are all float64), then 10*log10(clamp(x, min=amin)) and
(x - norm_mean) / norm_std; chunk k is frames [k*F, (k+1)*F) of the
whole-signal spectrogram, as include/genred/mel.h specifies.

Tolerance, in dB. genred computes in float32, so a bin's FFT error is about
eps * ||frame|| in amplitude whatever the bin's own level: the error in dB
of a mel value grows with the amplitude ratio between the frame's loudest
mel band and that value, r = 10**((peak_dB - value_dB) / (10 * power)).
We allow |diff| <= 1e-4 + 2e-5 * r. The worst factor of r measured over
15 runs of these signals (sweep, GTZAN, quiet, loud, htk, power 1; each
process may get another FFTW_MEASURE plan) is 5e-6: a 4x margin. Bands
within 20 dB of the frame's peak must match to ~3e-4 dB, while the errors
this catches (window, padding, framing, filterbank, scale) are 0.01 dB or
more.

Needs GENRED_TOOL_MEL (the built mel_npy) and GENRED_SHARED (the shared
folder with data/gtzan16k); a missing one fails the tests that need it with
a message, nothing is skipped (as in conftest.py). Run by hand:
  GENRED_TOOL_MEL=build/tests/mel_npy GENRED_SHARED=../shared \
    /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/test_mel.py
"""
import glob
import io
import os
import subprocess

import numpy as np
import pytest
import torch
import torchaudio

SR = 16000
L = 128 * 375  # samples per chunk with the default parameters
DEFAULTS = dict(sample_rate=16000, n_fft=1024, win_length=1024, hop_length=375,
                n_mels=128, chunk_frames=128, fmin=0.0, fmax=8000.0,
                mel_scale="slaney", mel_norm="slaney", power=2.0, amin=1e-10,
                norm_mean=0.0, norm_std=1.0)
TOL_FLOOR_DB = 1e-4
TOL_PER_RATIO_DB = 2e-5


@pytest.fixture(scope="session")
def tool():
    path = os.environ.get("GENRED_TOOL_MEL")
    if not path:
        pytest.fail("GENRED_TOOL_MEL is not set: point it at the built mel_npy "
                    "tool (`meson test` sets it; by hand: "
                    "GENRED_TOOL_MEL=build/tests/mel_npy)", pytrace=False)
    if not os.access(path, os.X_OK):
        pytest.fail(f"GENRED_TOOL_MEL={path} is not an executable file", pytrace=False)
    return path


def run_tool(tool, tmp_path, signal, **options):
    """Runs mel_npy on signal; returns (returncode, output array or None, stderr)."""
    src, dst = tmp_path / "in.npy", tmp_path / "out.npy"
    if dst.exists():
        dst.unlink()
    np.save(src, signal)
    args = [tool, str(src), str(dst)] + [f"{k}={v}" for k, v in options.items()]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    out = np.load(dst) if proc.returncode == 0 else None
    return proc.returncode, out, proc.stderr


def mel_chunks(tool, tmp_path, signal, **options):
    rc, out, err = run_tool(tool, tmp_path, signal, **options)
    assert rc == 0, f"mel_npy failed: {err}"
    assert out.dtype == np.float32
    return out


def reference_db(signal, **options):
    """Float64 torchaudio log-mel chunks in dB (before norm_mean/std)."""
    p = dict(DEFAULTS, **options)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        transform = torchaudio.transforms.MelSpectrogram(
            sample_rate=p["sample_rate"], n_fft=p["n_fft"],
            win_length=p["win_length"], hop_length=p["hop_length"],
            f_min=p["fmin"], f_max=p["fmax"], n_mels=p["n_mels"],
            window_fn=torch.hann_window, power=p["power"], normalized=False,
            center=True, pad_mode="reflect",
            norm=None if p["mel_norm"] == "none" else p["mel_norm"],
            mel_scale=p["mel_scale"])
        assert transform.mel_scale.fb.dtype == torch.float64
        assert transform.spectrogram.window.dtype == torch.float64
        spec = transform(torch.from_numpy(signal.astype(np.float64)))
    finally:
        torch.set_default_dtype(prev)
    db = (10.0 * torch.log10(torch.clamp(spec, min=p["amin"]))).numpy()
    frames = p["chunk_frames"]
    n_chunks = len(signal) // (frames * p["hop_length"])
    assert db.shape[1] >= n_chunks * frames
    return np.stack([db[:, k * frames:(k + 1) * frames] for k in range(n_chunks)]) \
        if n_chunks else np.zeros((0, p["n_mels"], frames))


def assert_matches_reference(got, signal, **options):
    p = dict(DEFAULTS, **options)
    ref = reference_db(signal, **options)
    assert got.shape == ref.shape
    got_db = got.astype(np.float64) * p["norm_std"] + p["norm_mean"]
    diff = np.abs(got_db - ref)
    below_peak = ref.max(axis=1, keepdims=True) - ref  # per frame, over bands
    ratio = 10.0 ** (below_peak / (10.0 * p["power"]))
    tol = TOL_FLOOR_DB + TOL_PER_RATIO_DB * ratio
    worst = np.unravel_index(np.argmax(diff - tol), diff.shape)
    assert (diff <= tol).all(), (
        f"{int((diff > tol).sum())} values off; worst at chunk/band/frame {worst}: "
        f"got {got_db[worst]:.6f} dB, want {ref[worst]:.6f} dB, tol {tol[worst]:.2e}")
    near_peak = below_peak <= 20.0
    assert diff[near_peak].max() <= 5e-4


def sweep_with_noise(n, seed=1, amplitude=0.5):
    """Exponential sine sweep 50 Hz -> 7.9 kHz plus white noise at -60 dB,
    so that every band sits well above the amin floor."""
    t = np.arange(n) / SR
    dur = n / SR
    k = np.log(7900.0 / 50.0)
    sweep = amplitude * np.sin(2 * np.pi * 50.0 * dur / k * (np.exp(t / dur * k) - 1))
    noise = 1e-3 * np.random.default_rng(seed).standard_normal(n)
    return (sweep + noise).astype(np.float32)


def gtzan_excerpt():
    shared = os.environ.get("GENRED_SHARED")
    if not shared:
        pytest.fail("GENRED_SHARED is not set: it must name the shared folder with "
                    "data/gtzan16k (`meson test` sets it)", pytrace=False)
    files = sorted(glob.glob(os.path.join(shared, "data", "gtzan16k", "*", "*.flac")))
    if not files:
        pytest.fail(f"no GTZAN audio under {shared}/data/gtzan16k", pytrace=False)
    pcm = subprocess.run(["ffmpeg", "-v", "error", "-i", files[0], "-f", "f32le",
                          "-ac", "1", "-ar", str(SR), "-"],
                         capture_output=True, check=True, timeout=60).stdout
    return np.frombuffer(pcm, dtype=np.float32).copy()


# A signal of 2.5 chunks: the second chunk's last frames read the trailing
# partial chunk's audio (not a reflection), the first frame is reflected.
def test_sweep_default_params(tool, tmp_path):
    x = sweep_with_noise(int(2.5 * L))
    got = mel_chunks(tool, tmp_path, x)
    assert got.shape == (2, 128, 128)
    assert_matches_reference(got, x)


def test_output_file_is_what_numpy_writes(tool, tmp_path):
    x = sweep_with_noise(L + 100)
    got = mel_chunks(tool, tmp_path, x)
    buf = io.BytesIO()
    np.save(buf, got)
    assert (tmp_path / "out.npy").read_bytes() == buf.getvalue()


def test_gtzan_excerpt(tool, tmp_path):
    x = gtzan_excerpt()
    assert len(x) >= 10 * L
    got = mel_chunks(tool, tmp_path, x)
    assert got.shape == (len(x) // L, 128, 128)
    assert_matches_reference(got, x)


def test_gtzan_on_four_threads(tool, tmp_path):
    # mel_npy computes the chunks on 4 threads at once and fails unless all
    # are bit-identical; the result must still match the reference.
    x = gtzan_excerpt()
    got = mel_chunks(tool, tmp_path, x, threads=4)
    assert_matches_reference(got, x)


def test_htk_scale_without_norm(tool, tmp_path):
    x = sweep_with_noise(2 * L + 5, seed=2)
    opts = dict(mel_scale="htk", mel_norm="none")
    assert_matches_reference(mel_chunks(tool, tmp_path, x, **opts), x, **opts)


def test_magnitude_power_1(tool, tmp_path):
    x = sweep_with_noise(2 * L + 5, seed=3)
    assert_matches_reference(mel_chunks(tool, tmp_path, x, power=1.0), x, power=1.0)


def test_fractional_power(tool, tmp_path):
    x = sweep_with_noise(L + 5, seed=8)
    assert_matches_reference(mel_chunks(tool, tmp_path, x, power=1.5), x, power=1.5)


@pytest.mark.parametrize("opts", [
    # Short window centred in a longer FFT, other hop and chunk size.
    dict(n_fft=512, win_length=400, hop_length=160, chunk_frames=100, n_mels=64,
         fmin=20.0, fmax=7600.0),
    # Non-power-of-two FFT, odd (n_fft - win_length), other sample rate.
    dict(sample_rate=22050, n_fft=600, win_length=555, hop_length=256,
         chunk_frames=64, n_mels=80, fmax=11025.0, mel_scale="htk"),
    # Odd sample rate: torchaudio's bin frequencies run to sample_rate // 2.
    dict(sample_rate=11025, n_fft=512, win_length=512, hop_length=128,
         chunk_frames=64, n_mels=40, fmax=5512.0),
    # Odd n_fft: pad is n_fft // 2 on both sides.
    dict(n_fft=1023, win_length=1023, hop_length=200, chunk_frames=50, n_mels=40),
])
def test_other_framing(tool, tmp_path, opts):
    x = sweep_with_noise(20000 + 7, seed=4)
    got = mel_chunks(tool, tmp_path, x, **opts)
    n_chunks = len(x) // (opts["chunk_frames"] * opts["hop_length"])
    assert got.shape == (n_chunks, opts["n_mels"], opts["chunk_frames"])
    assert n_chunks >= 1
    assert_matches_reference(got, x, **opts)


def test_norm_mean_and_std(tool, tmp_path):
    x = sweep_with_noise(L + 1000, seed=5)
    opts = dict(norm_mean=-30.0, norm_std=20.0)
    got = mel_chunks(tool, tmp_path, x, **opts)
    # Compared with the reference after undoing the normalisation; not with
    # a second run's plain output, as FFTW_MEASURE may pick another plan in
    # another process and round differently (within the tolerance above).
    assert_matches_reference(got, x, **opts)
    assert -3.0 < got.mean() < 3.0  # dB values near -30 land near 0


@pytest.mark.parametrize("n,want", [(L - 1, 0), (L, 1), (2 * L + 5, 2)])
def test_chunk_count(tool, tmp_path, n, want):
    x = sweep_with_noise(n, seed=6)
    got = mel_chunks(tool, tmp_path, x)
    assert got.shape == (want, 128, 128)
    if want:
        # n == L: the last frames are reflected at the signal's end.
        assert_matches_reference(got, x)


def test_silence_sits_on_the_amin_floor(tool, tmp_path):
    got = mel_chunks(tool, tmp_path, np.zeros(2 * L, np.float32), amin=1e-8)
    assert got.shape == (2, 128, 128)
    np.testing.assert_allclose(got, -80.0, atol=1e-4)


def test_quiet_tone_clamped_at_amin(tool, tmp_path):
    # A faint pure tone: bands far from it hold tiny but nonzero energy,
    # which must be clamped to amin (-100 dB), not passed to log10.
    x = (1e-4 * np.sin(2 * np.pi * 440.0 * np.arange(L + 7) / SR)).astype(np.float32)
    got = mel_chunks(tool, tmp_path, x)
    assert got.min() >= -100.0 - 1e-4
    assert (got < -99.99).sum() > 1000, "expected many bands on the floor"
    assert_matches_reference(got, x)


@pytest.mark.parametrize("opts", [
    dict(win_length=2048),
    dict(n_fft=0),
    dict(win_length=0),
    dict(hop_length=0),
    dict(hop_length=-375),
    dict(n_mels=0),
    dict(chunk_frames=0),
    dict(sample_rate=0),
    dict(fmax=8001.0),
    dict(fmin=8000.0),
    dict(fmin=-1.0),
    dict(fmin=4000.0, fmax=3000.0),
    dict(norm_std=0.0),
    dict(norm_std=-1.0),
    dict(amin=0.0),
    dict(power=0.0),
    dict(power=-2.0),
    dict(power="nan"),
    dict(mel_scale="bark"),
    dict(mel_norm="area"),
    dict(n_fft="1024x"),
    dict(colour="blue"),
    # A chunk must be longer than the reflect padding (n_fft // 2).
    dict(chunk_frames=1, hop_length=500),
])
def test_invalid_params_refused(tool, tmp_path, opts):
    rc, out, err = run_tool(tool, tmp_path, sweep_with_noise(2 * L), **opts)
    assert rc != 0 and out is None
    assert not (tmp_path / "out.npy").exists()
    assert err.strip(), "no error message"


def test_invalid_input_refused(tool, tmp_path):
    for bad in [np.zeros((2, L), np.float32), np.zeros(L, np.float64)]:
        rc, out, err = run_tool(tool, tmp_path, bad)
        assert rc != 0 and err.strip()
    proc = subprocess.run([tool, str(tmp_path / "missing.npy"), str(tmp_path / "o.npy")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and proc.stderr.strip()
    proc = subprocess.run([tool], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "usage" in proc.stderr


# ---- the pretrained backbone's front end (Kaldi banks, ln) --------------------
#
# The front end of EfficientAT mn04 (train/mn04.py FEATURES): 32 kHz,
# pre-emphasis 0.97, a symmetric 800-sample Hann window centred in a 1024-point
# FFT, hop 320, 128 Kaldi mel banks over 0-15 kHz (the Nyquist bin weighted 0),
# ln(x + 1e-5), (x + 4.5) / 5. The reference is torch.stft and
# torchaudio.compliance.kaldi.get_mel_banks in float64, over the whole
# pre-emphasised signal (chunk k is frames [k*300, (k+1)*300), as for the
# other front ends). Tolerance: the dB rule above in ln units (x ln(10)/10),
# with r measured against the frame's whole power rather than its loudest
# band; the offset only lifts quiet values, which makes errors smaller.
KALDI = dict(sample_rate=32000, preemphasis=0.97, n_fft=1024, win_length=800,
             window="hann_symmetric", hop_length=320, n_mels=128, chunk_frames=300,
             fmin=0.0, fmax=15000.0, mel_scale="kaldi", mel_norm="none", power=2.0,
             log="ln", log_offset=1e-5, amin="-", norm_mean=0.0, norm_std=1.0)
KALDI_L = 300 * 320
LN_PER_DB = np.log(10.0) / 10.0


def kaldi_reference(signal, p=KALDI):
    """Float64 ln-mel chunks [n_chunks, n_mels, frames] (before norm_mean/std)
    and the per-value tolerance."""
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        x = torch.from_numpy(signal.astype(np.float64))
        y = x[1:] - p["preemphasis"] * x[:-1]
        window = torch.hann_window(p["win_length"], periodic=False)
        spec = torch.stft(y, p["n_fft"], hop_length=p["hop_length"], win_length=p["win_length"],
                          window=window, center=True, pad_mode="reflect", normalized=False,
                          return_complex=True)
        power = spec.real ** 2 + spec.imag ** 2
        banks, _ = torchaudio.compliance.kaldi.get_mel_banks(
            p["n_mels"], p["n_fft"], float(p["sample_rate"]), p["fmin"], p["fmax"],
            100.0, -500.0, 1.0)
        assert banks.dtype == torch.float64
        mel = torch.nn.functional.pad(banks, (0, 1)) @ power
        ln = torch.log(mel + p["log_offset"]).numpy()
        # A float32 FFT's error scales with the frame's whole energy, which
        # may lie outside every band (above fmax): measure below that.
        frame_db = 10 * np.log10(power.numpy().sum(axis=0, keepdims=True) + 1e-30)
        below = frame_db - 10 * np.log10(mel.numpy() + 1e-30)
    finally:
        torch.set_default_dtype(prev)
    tol = (TOL_FLOOR_DB + TOL_PER_RATIO_DB * 10.0 ** (below / 20.0)) * LN_PER_DB
    frames = p["chunk_frames"]
    n_chunks = len(signal) // KALDI_L
    cut = lambda a: np.stack([a[:, k * frames:(k + 1) * frames] for k in range(n_chunks)])
    return cut(ln), cut(tol)


def assert_matches_kaldi(got, signal):
    ref, tol = kaldi_reference(signal)
    assert got.shape == ref.shape
    diff = np.abs(got.astype(np.float64) - ref)
    worst = np.unravel_index(np.argmax(diff - tol), diff.shape)
    assert (diff <= tol).all(), (
        f"{int((diff > tol).sum())} values off; worst at chunk/band/frame {worst}: "
        f"got {got[worst]:.6f}, want {ref[worst]:.6f}, tol {tol[worst]:.2e}")
    return diff.max()


def gtzan_at_32k():
    x = gtzan_excerpt()   # 16 kHz; a plain 2x resample, as the daemon's decoder does
    return np.repeat(x, 2).astype(np.float32)


def test_kaldi_front_end_sweep(tool, tmp_path):
    t = np.arange(2 * KALDI_L + 777) / 32000.0
    x = (0.5 * np.sin(2 * np.pi * 60.0 * 20 / np.log(250) * (np.exp(t / 20 * np.log(250)) - 1))
         + 1e-3 * np.random.default_rng(9).standard_normal(len(t))).astype(np.float32)
    got = mel_chunks(tool, tmp_path, x, **KALDI)
    assert got.shape == (2, 128, 300)
    assert_matches_kaldi(got, x)


def test_kaldi_front_end_gtzan(tool, tmp_path):
    x = gtzan_at_32k()
    got = mel_chunks(tool, tmp_path, x, **KALDI)
    assert got.shape == (len(x) // KALDI_L, 128, 300)
    assert_matches_kaldi(got, x)


def test_kaldi_one_chunk_is_efficientat_framing(tool, tmp_path):
    # Exactly one chunk: 96,000 samples, pre-emphasis leaves 95,999, and the
    # 300 centred frames reflect at both ends, as EfficientAT frames a clip.
    x = gtzan_at_32k()[:KALDI_L]
    got = mel_chunks(tool, tmp_path, x, **KALDI)
    assert got.shape == (1, 128, 300)
    assert_matches_kaldi(got, x)


def test_kaldi_banks_end_at_fmax(tool, tmp_path):
    # A tone between fmax (15 kHz) and Nyquist reaches no band but through
    # the window's leakage: its loudest band is > 20 dB (4.6 in ln) below
    # that of the same tone at 14 kHz.
    t = np.arange(KALDI_L) / 32000.0
    above = (0.5 * np.sin(2 * np.pi * 15800.0 * t)).astype(np.float32)
    inside = (0.5 * np.sin(2 * np.pi * 14000.0 * t)).astype(np.float32)
    got_above = mel_chunks(tool, tmp_path, above, **KALDI)
    assert_matches_kaldi(got_above, above)
    got_inside = mel_chunks(tool, tmp_path, inside, **KALDI)
    assert_matches_kaldi(got_inside, inside)
    assert got_inside.max() - got_above.max() > 4.6


@pytest.mark.parametrize("opts", [
    dict(KALDI, log_offset=0.0),
    dict(KALDI, log_offset="-"),
    dict(KALDI, amin=1e-10),                 # amin belongs to log=db
    dict(KALDI, mel_norm="slaney"),          # Kaldi banks are not area-normalised
    dict(KALDI, preemphasis=1.0),
    dict(KALDI, preemphasis=-0.1),
    dict(KALDI, window="hamming"),
    dict(KALDI, log="log2"),
    dict(KALDI, mel_scale="kaldy"),
])
def test_kaldi_invalid_params_refused(tool, tmp_path, opts):
    rc, out, err = run_tool(tool, tmp_path, np.zeros(2 * KALDI_L, np.float32), **opts)
    assert rc != 0 and out is None and err.strip()
