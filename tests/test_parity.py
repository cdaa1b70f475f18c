"""test_parity.py - the C engine against PyTorch, through the .gmodel format.

Each model is built in PyTorch (fixed seed, eval mode, batch-norm running
statistics set to non-trivial values), exported with train/gmodel.py, and run
over the same inputs by PyTorch and by the C tool `infer_npy` (src/model.c +
src/nn.c). Probabilities must agree to 1e-4 absolute. So that this is not
trivially true of near-uniform outputs, the last dense layer of every model is
scaled until its softmax is confident (checked), and the pre-softmax logits
are compared too (to 2e-5 of their largest magnitude), by exporting the same
model without its final softmax.

Also: a waveform-input model (design (d) of train/models.py, the softmax
autoencoder's classifier, [1, 1, 500] in) agrees the same way;
gmodel.load(gmodel.save(m)) rebuilds m exactly; gmodel.save refuses what
the format cannot represent; every bundled $GENRED_SOURCE/models/*.gmodel
loads in PyTorch and in C with the same answers.

Needs GENRED_TOOL_INFER (the infer_npy binary) and GENRED_SOURCE (the source
tree); `meson test` sets both.
"""
import copy
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "train"))
import gmodel  # noqa: E402

FEATURES = {
    "kind": "logmel", "sample_rate": 16000, "n_fft": 1024, "win_length": 1024,
    "hop_length": 375, "n_mels": 128, "chunk_frames": 128, "fmin": 0.0,
    "fmax": 8000.0, "mel_scale": "slaney", "mel_norm": "slaney", "power": 2.0,
    "amin": 1e-10, "norm_mean": -30.0, "norm_std": 20.0,
}
GENRES = ["blues", "classical", "country", "disco", "hiphop", "jazz", "metal",
          "pop", "reggae", "rock"]
TOLERANCE = 1e-4         # probabilities, absolute
LOGIT_TOLERANCE = 2e-5   # logits, relative to the largest |logit| (at least 1)


# ---- models ---------------------------------------------------------------

def conv_block(cin, cout, k, pool, **conv_args):
    return [nn.Conv2d(cin, cout, k, **conv_args), nn.BatchNorm2d(cout), nn.ReLU(), pool]


def arch_a():
    """5 x [conv5x5 + BN + ReLU + maxpool], 8..128 channels, global pool, dense."""
    layers, c = [], 1
    for o in (8, 16, 32, 64, 128):
        layers += conv_block(c, o, 5, nn.MaxPool2d(2), padding=2)
        c = o
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(128, len(GENRES)), nn.Softmax(dim=-1))


def arch_b():
    """4 x conv3x3 growing to 512 channels (one with stride 2), flatten,
    dense layers with dropout and a BatchNorm1d."""
    return nn.Sequential(
        *conv_block(1, 64, 3, nn.MaxPool2d(2), padding=1),
        *conv_block(64, 128, 3, nn.MaxPool2d(2), padding=1),
        *conv_block(128, 256, 3, nn.MaxPool2d(2), padding=1, stride=2),
        *conv_block(256, 512, 3, nn.MaxPool2d(2), padding=1),
        nn.Flatten(), nn.Dropout(0.5),
        nn.Linear(512 * 4 * 4, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(256, 64), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(64, len(GENRES)), nn.Softmax(dim=-1))


def arch_c():
    """ELU and average pools, non-square kernels and strides, a batch-norm
    that cannot be folded, 1x1 conv + tanh, global max pool, sigmoid."""
    return nn.Sequential(
        nn.Conv2d(1, 16, (3, 5), padding=(1, 2)), nn.BatchNorm2d(16), nn.ELU(0.7),
        nn.AvgPool2d(2),
        nn.Conv2d(16, 32, (5, 3), stride=(2, 1), padding=(2, 1), bias=False), nn.ELU(),
        nn.AvgPool2d((2, 3), stride=(2, 2)),
        nn.BatchNorm2d(32),
        nn.Conv2d(32, 48, 1), nn.Tanh(),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(),
        nn.Linear(48, 32), nn.BatchNorm1d(32), nn.Sigmoid(),
        nn.Linear(32, len(GENRES)), nn.Softmax(dim=-1))


def arch_d():
    """Sigmoid output (no softmax), nested Sequential, Identity, Dropout2d,
    a max pool with stride != kernel, conv without padding."""
    inner = nn.Sequential(nn.Conv2d(8, 12, 3), nn.BatchNorm2d(12), nn.ReLU(), nn.Identity())
    return nn.Sequential(
        nn.Conv2d(1, 8, (7, 3), stride=(3, 2), padding=(3, 1)), nn.ReLU(),
        nn.MaxPool2d(3, stride=2), nn.Dropout2d(0.2), inner,
        nn.AvgPool2d(2), nn.Flatten(),
        nn.Linear(12 * 9 * 14, 6), nn.Sigmoid())


ARCHS = {"a": (arch_a, GENRES), "b": (arch_b, GENRES), "c": (arch_c, GENRES),
         "d": (arch_d, GENRES[:6])}


def make_model(arch):
    build, genres = ARCHS[arch]
    torch.manual_seed(1234 + ord(arch))
    model = build()
    gen = torch.Generator().manual_seed(99)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                c = m.num_features
                m.running_mean.copy_(torch.rand(c, generator=gen) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.25)
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(c, generator=gen) * 0.4 - 0.2)
    model.eval()
    sharpen(model, inputs(8, seed=5))
    return model, genres


def head(model):
    """The model without a final Softmax/Sigmoid: its output is the logits."""
    last = list(model)[-1]
    return model[:-1] if isinstance(last, (nn.Softmax, nn.Sigmoid)) else model


def sharpen(model, x):
    """Scales the last Linear (a softmax temperature) until the largest
    probability averages at least 0.75 on x, sigmoid outputs alike: outputs
    are then confident, and a wrong engine shows."""
    lin = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        for _ in range(40):
            logits = head(model)(x)
            if isinstance(list(model)[-1], nn.Sigmoid):
                top = (torch.sigmoid(logits) - 0.5).abs().mean() + 0.5
            else:
                top = torch.softmax(logits, dim=1).max(dim=1).values.mean()
            if float(top) >= 0.75:
                return
            lin.weight.mul_(1.5)
            if lin.bias is not None:
                lin.bias.mul_(1.5)
    raise AssertionError("could not make the test model confident")


def inputs(n_random, seed):
    """Random log-mel-like chunks plus structured ones: silence, constant,
    harmonic stripes, rhythmic columns, a ramp, a checkerboard, and a decaying
    spectrum with noise. Shape [N, 1, 128, 128], float32."""
    g = torch.Generator().manual_seed(seed)
    f = torch.arange(128, dtype=torch.float32).view(128, 1)
    t = torch.arange(128, dtype=torch.float32).view(1, 128)
    structured = [
        torch.zeros(128, 128),
        torch.full((128, 128), 2.0),
        torch.sin(f * 0.7).expand(128, 128) * 2.0,
        (torch.remainder(t, 16) < 3).float().expand(128, 128) * 3.0 - 1.0,
        (f + t) / 64.0 - 2.0,
        ((torch.remainder(f, 2) + torch.remainder(t, 2)) % 2) * 4.0 - 2.0,
        -f / 32.0 + 0.5 * torch.randn(128, 128, generator=g),
    ]
    rand = [torch.randn(128, 128, generator=g) * s for s in np.linspace(0.5, 2.0, n_random)]
    return torch.stack(structured + rand).unsqueeze(1).contiguous()


# ---- running both engines -------------------------------------------------

def run_c(tool, model_path, x, tmp_path, max_batch=5, three_dims=False):
    """Runs infer_npy over x ([N,1,H,W] tensor) and returns [N, outputs]."""
    inp, out = tmp_path / "in.npy", tmp_path / "out.npy"
    arr = x.numpy().astype("<f4")
    np.save(inp, arr[:, 0] if three_dims else arr)
    r = subprocess.run([tool, str(model_path), str(inp), str(out), str(max_batch)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"infer_npy failed ({r.returncode}): {r.stderr}"
    return np.load(out)


def run_torch(model, x):
    with torch.no_grad():
        return model(x).numpy()


def assert_parity(tool, model, genres, x, tmp_path, softmax=True):
    path = tmp_path / "m.gmodel"
    gmodel.save(path, model, genres, FEATURES, "parity", "0", "", {"test": True})
    want = run_torch(model, x)
    got = run_c(tool, path, x, tmp_path)
    assert got.shape == want.shape == (len(x), len(genres))
    diff = float(np.abs(got - want).max())
    assert diff <= TOLERANCE, f"probabilities differ by {diff}"
    top = want.max(axis=1) if softmax else np.abs(want - 0.5).max(axis=1) + 0.5
    assert top.mean() > 0.6, f"outputs too uniform to prove anything: {top}"

    # The logits, through the same model without its final activation.
    h = head(model)
    hpath = tmp_path / "head.gmodel"
    gmodel.save(hpath, h, genres, FEATURES, "parity-head", "0")
    want_l = run_torch(h, x)
    got_l = run_c(tool, hpath, x, tmp_path)
    scale = max(1.0, float(np.abs(want_l).max()))
    diff_l = float(np.abs(got_l - want_l).max())
    assert diff_l <= LOGIT_TOLERANCE * scale, f"logits differ by {diff_l} (scale {scale})"
    assert float(want_l.std()) > 1.0, "logits too flat to prove anything"
    return got


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_parity(arch, infer_tool, tmp_path):
    model, genres = make_model(arch)
    x = inputs(6 if arch == "b" else 9, seed=ord(arch))
    # arch d ends in a sigmoid: confident there means far from 0.5.
    got = assert_parity(infer_tool, model, genres, x, tmp_path, softmax=arch != "d")
    # Batch size must not change the answer beyond float rounding (sgemm may
    # block a batch differently): one item at a time, and the [N, H, W] form.
    one = run_c(infer_tool, tmp_path / "m.gmodel", x, tmp_path, max_batch=1, three_dims=True)
    assert float(np.abs(one - got).max()) <= 1e-5


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_roundtrip(arch, tmp_path):
    model, genres = make_model(arch)
    path = tmp_path / "m.gmodel"
    meta = {"dataset": "none", "accuracy": 0.5, "seed": np.int64(3), "lr": np.float32(0.5),
            "loss": torch.tensor(0.25)}
    header = gmodel.save(path, model, genres, FEATURES, "rt", "1.2.3", "roundtrip", meta)
    rebuilt, h2 = gmodel.load(path)
    assert h2 == header
    assert h2["training"] == {"dataset": "none", "accuracy": 0.5, "seed": 3, "lr": 0.5,
                              "loss": 0.25}
    assert h2["genres"] == list(genres) and h2["features"] == FEATURES
    assert not rebuilt.training
    x = inputs(3, seed=11)
    assert float(np.abs(run_torch(rebuilt, x) - run_torch(model, x)).max()) <= 1e-6
    n_params = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in rebuilt.parameters()) == n_params
    # Saving the rebuilt model gives the same file.
    path2 = tmp_path / "m2.gmodel"
    gmodel.save(path2, rebuilt, genres, FEATURES, "rt", "1.2.3", "roundtrip", h2["training"])
    assert path.read_bytes() == path2.read_bytes()


def test_training_keyword_alias(tmp_path):
    model, genres = make_model("a")
    gmodel.save(tmp_path / "m.gmodel", model, genres, FEATURES, "n", "v", training={"k": 1})
    assert gmodel.load(tmp_path / "m.gmodel")[1]["training"] == {"k": 1}


def test_corrupt_file_refused_by_both(infer_tool, tmp_path):
    model, genres = make_model("a")
    path = tmp_path / "m.gmodel"
    gmodel.save(path, model, genres, FEATURES, "n", "v")
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x04
    path.write_bytes(bytes(blob))
    with pytest.raises(gmodel.GModelError, match="CRC mismatch"):
        gmodel.load(path)
    np.save(tmp_path / "in.npy", inputs(0, 1).numpy())
    r = subprocess.run([infer_tool, str(path), str(tmp_path / "in.npy"),
                        str(tmp_path / "out.npy")], capture_output=True, text=True)
    assert r.returncode != 0 and "CRC mismatch" in r.stderr, r.stderr


def bad(mods):
    return lambda: nn.Sequential(*mods)


REFUSED = {
    "grouped conv": (bad([nn.Conv2d(1, 2, 3, groups=1), nn.Conv2d(2, 2, 3, groups=2)]), "groups"),
    "dilated conv": (bad([nn.Conv2d(1, 2, 3, dilation=2)]), "dilation"),
    "reflect padding": (bad([nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect")]), "zero padding"),
    "padded maxpool": (bad([nn.MaxPool2d(3, padding=1)]), "padding"),
    "ceil mode": (bad([nn.AvgPool2d(3, ceil_mode=True)]), "ceil_mode"),
    "lstm": (bad([nn.LSTM(4, 4)]), "cannot be represented"),
    "log softmax": (bad([nn.Flatten(), nn.Linear(128 * 128, 10), nn.LogSoftmax(dim=-1)]),
                    "cannot be represented"),
    "adaptive pool 2": (bad([nn.AdaptiveAvgPool2d(2), nn.Flatten()]), "output size 1"),
    "pool without flatten": (bad([nn.AdaptiveAvgPool2d(1), nn.Conv2d(1, 10, 1)]), "Flatten"),
    "softmax not last": (bad([nn.Flatten(), nn.Linear(128 * 128, 10), nn.Softmax(dim=-1),
                              nn.Identity()]), "last layer"),
    "softmax over channels": (bad([nn.Conv2d(1, 10, 128), nn.Softmax(dim=1)]), "flat"),
    "linear on image": (bad([nn.Linear(128, 10)]), "flat input"),
    "wrong channels": (bad([nn.Conv2d(3, 10, 3)]), "channels"),
    "genre count": (bad([nn.Flatten(), nn.Linear(128 * 128, 7)]), "genres"),
    "partial flatten": (bad([nn.Flatten(start_dim=2)]), "Flatten"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_save_refuses(case, tmp_path):
    build, message = REFUSED[case]
    with pytest.raises(gmodel.GModelError, match=message):
        gmodel.save(tmp_path / "x.gmodel", build().eval(), GENRES, FEATURES, "n", "v")
    assert not (tmp_path / "x.gmodel").exists()


def test_save_refuses_bad_metadata(tmp_path):
    model, genres = make_model("a")
    p = tmp_path / "x.gmodel"
    cases = [
        (dict(genres=genres[:-1] + [genres[0]]), "unique"),
        (dict(genres=["only"]), "at least two"),
        (dict(features={**FEATURES, "kind": "mfcc"}), "logmel"),
        (dict(features={k: v for k, v in FEATURES.items() if k != "n_fft"}), "n_fft"),
        (dict(features={**FEATURES, "fmax": float("nan")}), "finite"),
        (dict(name=""), "non-empty"),
        (dict(training_meta={"x": float("inf")}), "JSON"),
        (dict(training_meta={"x": object()}), "JSON"),
    ]
    for override, message in cases:
        args = dict(genres=genres, features=FEATURES, name="n", training_meta=None)
        args.update(override)
        with pytest.raises(gmodel.GModelError, match=message):
            gmodel.save(p, model, args["genres"], args["features"], args["name"], "v",
                        "", args["training_meta"])
    with pytest.raises(gmodel.GModelError, match="Sequential"):
        gmodel.save(p, nn.Linear(2, 2), genres, FEATURES, "n", "v")
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken[0].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(gmodel.GModelError, match="non-finite"):
        gmodel.save(p, broken, genres, FEATURES, "n", "v")
    assert not p.exists()


def test_bundled_models(infer_tool, source_dir, tmp_path):
    """Every model shipped in $GENRED_SOURCE/models loads in PyTorch (with
    gmodel.load) and in C, and both give the same probabilities. Shipped:
    tracked by git (scripts/get-model writes converted networks there too,
    which tests/test_backbone.py checks against their own definition)."""
    assert source_dir.is_dir(), f"GENRED_SOURCE={source_dir} is not a directory"
    listed = subprocess.run(["git", "-C", str(source_dir), "ls-files", "models/*.gmodel"],
                            capture_output=True, text=True)
    paths = (sorted(source_dir / p for p in listed.stdout.split()) if listed.returncode == 0
             else sorted((source_dir / "models").glob("*.gmodel")))
    assert paths, f"no models in {source_dir / 'models'}"
    for path in paths:
        model, header = gmodel.load(path)
        g = torch.Generator().manual_seed(7)
        x = torch.randn(12, *header["input"], generator=g)
        if header["input"] == [1, 128, 128]:
            x = torch.cat([x, inputs(0, seed=8)])
        want = run_torch(model, x)
        got = run_c(infer_tool, path, x, tmp_path)
        diff = float(np.abs(got - want).max())
        assert diff <= TOLERANCE, f"{path.name}: C and PyTorch differ by {diff}"


WAVEFORM = {"kind": "waveform", "sample_rate": 16000, "chunk_samples": 48000,
            "values": 500, "norm_mean": 0.09, "norm_std": 0.06}


def test_parity_waveform(infer_tool, tmp_path):
    """Design (d)'s exported classifier: flatten, dense 500 -> 64, sigmoid,
    dense 64 -> genres, softmax, on [1, 1, 500] envelopes."""
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "train"))
    import models
    torch.manual_seed(5)
    ae = models.arch_d(len(GENRES), (1, 1, 500))
    model = nn.Sequential(*ae.classifier(), nn.Softmax(dim=-1)).eval()
    g = torch.Generator().manual_seed(3)
    x = torch.cat([torch.randn(9, 1, 1, 500, generator=g) * s for s in (0.5, 2.0)] +
                  [torch.zeros(1, 1, 1, 500), torch.linspace(-3, 3, 500).view(1, 1, 1, 500)])
    sharpen(model, x)
    path = tmp_path / "d.gmodel"
    header = gmodel.save(path, model, GENRES, WAVEFORM, "dsae", "0")
    assert header["input"] == [1, 1, 500] and header["features"] == WAVEFORM
    want = run_torch(model, x)
    got = run_c(infer_tool, path, x, tmp_path)
    assert float(np.abs(got - want).max()) <= TOLERANCE
    assert want.max(axis=1).mean() > 0.6
    rebuilt, _ = gmodel.load(path)
    assert float(np.abs(run_torch(rebuilt, x) - want).max()) <= 1e-6
    with pytest.raises(gmodel.GModelError, match="multiple"):
        gmodel.save(path, model, GENRES, {**WAVEFORM, "values": 499}, "dsae", "0")
    with pytest.raises(gmodel.GModelError, match="n_fft"):
        gmodel.save(path, model, GENRES, {**WAVEFORM, "n_fft": 1024}, "dsae", "0")
