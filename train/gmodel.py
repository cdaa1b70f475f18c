"""gmodel.py - write and read genred's .gmodel files (docs/model-format.md).

save() exports a PyTorch nn.Sequential (nested Sequentials are flattened) to
the format that src/model.c loads; load() rebuilds an equivalent
nn.Sequential in eval mode from a file, for parity tests and evaluation.

Only what genred's C engine can run is representable; anything else (grouped
or dilated convolutions, padded pools, ceil mode, softmax that is not last,
unknown modules ...) is refused with a GModelError naming the layer.

What it does not do: training, feature extraction.

Import from other train/ scripts with
    sys.path.insert(0, str(Path(__file__).resolve().parent)); import gmodel
"""
import copy
import json
import math
import numbers
import os
import sys

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gmodel_file  # noqa: E402
from gmodel_file import GModelError  # noqa: E402,F401  (re-exported)

FEATURE_KEYS = ("kind", "sample_rate", "n_fft", "win_length", "hop_length",
                "n_mels", "chunk_frames", "fmin", "fmax", "mel_scale",
                "mel_norm", "power", "amin", "norm_mean", "norm_std")
WAVEFORM_KEYS = ("kind", "sample_rate", "chunk_samples", "values", "norm_mean", "norm_std")


def _leaves(module):
    if isinstance(module, nn.Sequential):
        for child in module:
            yield from _leaves(child)
    else:
        yield module


def _pair(v, what):
    if isinstance(v, int):
        return [v, v]
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(x, int) for x in v):
        return [int(v[0]), int(v[1])]
    raise GModelError(f"{what} must be an int or a pair of ints, got {v!r}")


def _window_out(n, k, s, p):
    return (n + 2 * p - k) // s + 1 if n + 2 * p >= k else 0


class _Data:
    """Collects tensors for the data section and hands out references."""

    def __init__(self):
        self.parts = []
        self.count = 0

    def ref(self, tensor, where):
        a = tensor.detach().to("cpu", torch.float32).contiguous().numpy()
        if not np.all(np.isfinite(a)):
            raise GModelError(f"{where}: tensor holds non-finite values")
        self.parts.append(a.reshape(-1).astype("<f4"))
        r = {"offset": self.count, "shape": [int(d) for d in a.shape]}
        self.count += a.size
        return r

    def tobytes(self):
        if not self.parts:
            return b""
        return np.concatenate(self.parts).astype("<f4").tobytes()


def input_shape(features):
    """[C, H, W] of one chunk: [1, n_mels, chunk_frames] for logmel,
    [1, 1, values] for waveform."""
    if features["kind"] == "waveform":
        return [1, 1, features["values"]]
    return [1, features["n_mels"], features["chunk_frames"]]


def _clean_features(features):
    """Returns features with plain int/float values (NumPy or torch scalars
    are converted), or raises GModelError."""
    kind = features.get("kind") if isinstance(features, dict) else None
    if kind not in ("logmel", "waveform"):
        raise GModelError("features: kind must be 'logmel' or 'waveform'")
    keys = WAVEFORM_KEYS if kind == "waveform" else FEATURE_KEYS
    if set(features) != set(keys):
        missing = set(keys) - set(features)
        extra = set(features) - set(keys)
        raise GModelError(f"features: {kind} needs exactly {keys}; missing "
                          f"{sorted(missing)}, unknown {sorted(extra)}")
    out = dict(features)
    ints = (("sample_rate", "chunk_samples", "values") if kind == "waveform" else
            ("sample_rate", "n_fft", "win_length", "hop_length", "n_mels", "chunk_frames"))
    for k in ints:
        v = out[k]
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise GModelError(f"features: {k} must be a positive int")
        out[k] = int(v)
    if kind == "waveform":
        if out["chunk_samples"] % out["values"]:
            raise GModelError("features: chunk_samples must be a multiple of values")
        floats = ("norm_mean", "norm_std")
    else:
        floats = ("fmin", "fmax", "power", "amin", "norm_mean", "norm_std")
    for k in floats:
        v = out[k]
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.item()
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise GModelError(f"features: {k} must be a finite number")
        out[k] = float(v)
    if kind == "waveform":
        return out
    if out["mel_scale"] not in ("slaney", "htk"):
        raise GModelError("features: mel_scale must be 'slaney' or 'htk'")
    if out["mel_norm"] not in ("slaney", "none"):
        raise GModelError("features: mel_norm must be 'slaney' or 'none'")
    return out


def _json_scalar(v):
    """json.dumps fallback for NumPy and torch scalars in training metadata."""
    if isinstance(v, np.generic) or (isinstance(v, torch.Tensor) and v.numel() == 1):
        return v.item()
    raise TypeError(f"{type(v).__name__} is not JSON serializable")


def _export_layers(module, input_shape, data):
    """Returns the header's layer list for module; shape is (C, H, W) or (F,)."""
    mods = list(_leaves(module))
    layers = []
    shape = tuple(input_shape)
    i = 0
    while i < len(mods):
        m = mods[i]
        where = f"layer {i} ({type(m).__name__})"
        flat = len(shape) == 1

        def need_image():
            if flat:
                raise GModelError(f"{where}: needs [C,H,W] input, got flat {list(shape)}")

        if isinstance(m, nn.Identity):
            pass
        elif isinstance(m, nn.Conv2d):
            need_image()
            if m.groups != 1 or tuple(m.dilation) != (1, 1):
                raise GModelError(f"{where}: groups and dilation must be 1")
            k, s = _pair(m.kernel_size, "kernel"), _pair(m.stride, "stride")
            if m.padding == "valid":
                p = [0, 0]
            elif m.padding == "same":
                if s != [1, 1] or k[0] % 2 == 0 or k[1] % 2 == 0:
                    raise GModelError(f"{where}: padding='same' needs stride 1 and odd kernels")
                p = [k[0] // 2, k[1] // 2]
            else:
                p = _pair(m.padding, "padding")
            if m.padding_mode != "zeros" and p != [0, 0]:
                raise GModelError(f"{where}: only zero padding is supported")
            if m.in_channels != shape[0]:
                raise GModelError(f"{where}: expects {m.in_channels} channels, gets {shape[0]}")
            oh, ow = _window_out(shape[1], k[0], s[0], p[0]), _window_out(shape[2], k[1], s[1], p[1])
            if oh < 1 or ow < 1:
                raise GModelError(f"{where}: kernel does not fit the {shape[1]}x{shape[2]} input")
            layer = {"type": "conv2d", "out_channels": m.out_channels, "kernel": k,
                     "stride": s, "padding": p, "weight": data.ref(m.weight, where)}
            if m.bias is not None:
                layer["bias"] = data.ref(m.bias, where)
            layers.append(layer)
            shape = (m.out_channels, oh, ow)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            if isinstance(m, nn.BatchNorm2d):
                need_image()
            elif not flat:
                raise GModelError(f"{where}: BatchNorm1d needs flat input, got {list(shape)}")
            if m.running_mean is None or m.running_var is None:
                raise GModelError(f"{where}: needs running statistics (track_running_stats=True)")
            if m.num_features != shape[0]:
                raise GModelError(f"{where}: expects {m.num_features} channels, gets {shape[0]}")
            c = m.num_features
            w = m.weight if m.affine else torch.ones(c)
            b = m.bias if m.affine else torch.zeros(c)
            layers.append({"type": "batchnorm", "eps": float(m.eps),
                           "weight": data.ref(w, where), "bias": data.ref(b, where),
                           "mean": data.ref(m.running_mean, where),
                           "var": data.ref(m.running_var, where)})
        elif isinstance(m, nn.ReLU):
            layers.append({"type": "relu"})
        elif isinstance(m, nn.ELU):
            layers.append({"type": "elu", "alpha": float(m.alpha)})
        elif isinstance(m, nn.Tanh):
            layers.append({"type": "tanh"})
        elif isinstance(m, nn.Sigmoid):
            layers.append({"type": "sigmoid"})
        elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            need_image()
            k = _pair(m.kernel_size, "kernel")
            s = _pair(m.stride if m.stride is not None else m.kernel_size, "stride")
            if _pair(m.padding, "padding") != [0, 0] or m.ceil_mode:
                raise GModelError(f"{where}: padding and ceil_mode are not supported")
            if isinstance(m, nn.MaxPool2d):
                if _pair(m.dilation, "dilation") != [1, 1] or m.return_indices:
                    raise GModelError(f"{where}: dilation and return_indices are not supported")
                kind = "maxpool2d"
            else:
                if m.divisor_override is not None:
                    raise GModelError(f"{where}: divisor_override is not supported")
                kind = "avgpool2d"
            oh, ow = _window_out(shape[1], k[0], s[0], 0), _window_out(shape[2], k[1], s[1], 0)
            if oh < 1 or ow < 1:
                raise GModelError(f"{where}: kernel is larger than the {shape[1]}x{shape[2]} input")
            layers.append({"type": kind, "kernel": k, "stride": s})
            shape = (shape[0], oh, ow)
        elif isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            need_image()
            size = m.output_size
            nxt = mods[i + 1] if i + 1 < len(mods) else None
            if size not in (1, (1, 1), [1, 1]) or not (
                    isinstance(nxt, nn.Flatten) and nxt.start_dim == 1 and nxt.end_dim == -1):
                raise GModelError(f"{where}: only output size 1 followed by Flatten() "
                                  "is supported (a global pool)")
            layers.append({"type": "global_avgpool" if isinstance(m, nn.AdaptiveAvgPool2d)
                           else "global_maxpool"})
            shape = (shape[0],)
            i += 1  # the Flatten is part of the global pool
        elif isinstance(m, nn.Flatten):
            if m.start_dim != 1 or m.end_dim != -1:
                raise GModelError(f"{where}: only Flatten(start_dim=1, end_dim=-1) is supported")
            layers.append({"type": "flatten"})
            shape = (int(np.prod(shape)),)
        elif isinstance(m, nn.Linear):
            if not flat:
                raise GModelError(f"{where}: needs flat input, got {list(shape)} (add Flatten)")
            if m.in_features != shape[0]:
                raise GModelError(f"{where}: expects {m.in_features} features, gets {shape[0]}")
            layer = {"type": "dense", "out_features": m.out_features,
                     "weight": data.ref(m.weight, where)}
            if m.bias is not None:
                layer["bias"] = data.ref(m.bias, where)
            layers.append(layer)
            shape = (m.out_features,)
        elif type(m) in (nn.Dropout, nn.Dropout2d):
            layers.append({"type": "dropout", "p": float(m.p)})
        elif isinstance(m, nn.Softmax):
            if i != len(mods) - 1:
                raise GModelError(f"{where}: softmax is only supported as the last layer")
            if not flat or m.dim not in (-1, 1):
                raise GModelError(f"{where}: softmax must run over flat features (dim=-1)")
            layers.append({"type": "softmax"})
        else:
            raise GModelError(f"{where}: this module cannot be represented in a .gmodel file")
        i += 1
    return layers, shape


def save(path, module, genres, features, name, version, description="",
         training_meta=None, *, training=None):
    """Writes module (an nn.Sequential) to path, atomically, and returns the
    header as written (plain JSON values). Batch-norm layers are exported with their running statistics,
    i.e. with eval semantics. `training` is an alias of training_meta."""
    if training is not None:
        if training_meta is not None:
            raise GModelError("give training_meta or training, not both")
        training_meta = training
    genres = list(genres)
    if (len(genres) < 2 or len(set(genres)) != len(genres)
            or not all(isinstance(g, str) and g for g in genres)):
        raise GModelError("genres must be at least two unique non-empty strings")
    if not isinstance(module, nn.Sequential):
        raise GModelError("module must be an nn.Sequential")
    features = _clean_features(features)
    if not (isinstance(name, str) and name and isinstance(version, str) and version):
        raise GModelError("name and version must be non-empty strings")
    if not isinstance(description, str):
        raise GModelError("description must be a string")
    training_meta = {} if training_meta is None else training_meta
    if not isinstance(training_meta, dict):
        raise GModelError("training_meta must be a dict")

    in_shape = input_shape(features)
    data = _Data()
    layers, out_shape = _export_layers(module, in_shape, data)
    if len(out_shape) != 1 or out_shape[0] != len(genres):
        raise GModelError(f"the model outputs {list(out_shape)}, but there are "
                          f"{len(genres)} genres")
    # Cross-check the shape walk above against PyTorch itself.
    probe = copy.deepcopy(module).to("cpu", torch.float32).eval()
    with torch.no_grad():
        got = tuple(probe(torch.zeros(1, *in_shape)).shape)
    if got != (1, len(genres)):
        raise GModelError(f"PyTorch says the model outputs {list(got)}, expected "
                          f"[1, {len(genres)}]")

    try:
        # NumPy and torch scalars in the metadata become plain JSON values.
        training_meta = json.loads(json.dumps(training_meta, default=_json_scalar))
    except (TypeError, ValueError) as e:
        raise GModelError(f"header is not representable as JSON: {e}") from e
    header = {"name": name, "version": version, "description": description,
              "genres": genres, "features": dict(features), "input": in_shape,
              "layers": layers, "training": training_meta}
    return gmodel_file.write(path, header, data.tobytes())


def read_header(path):
    """Checks the container of path (magic, version, lengths, padding, CRC)
    and returns (header dict, float32 data array)."""
    header, raw = gmodel_file.read(path)
    return header, np.frombuffer(raw, dtype="<f4").astype(np.float32)


def load(path):
    """Returns (nn.Sequential in eval mode, header dict) rebuilt from path."""
    header, data = read_header(path)

    def tensor(layer, key, want):
        t = layer[key]
        o, shp = t["offset"], list(t["shape"])
        if shp != list(want) or o < 0 or o + int(np.prod(shp)) > data.size:
            raise GModelError(f"{path}: tensor {key} {t} does not fit, expected shape {want}")
        return torch.from_numpy(data[o:o + int(np.prod(shp))].reshape(shp).copy())

    mods = []
    shape = tuple(header["input"])
    for idx, L in enumerate(header["layers"]):
        t = L["type"]
        if t == "conv2d":
            oc, k, s, p = L["out_channels"], L["kernel"], L["stride"], L["padding"]
            m = nn.Conv2d(shape[0], oc, tuple(k), tuple(s), tuple(p), bias="bias" in L)
            with torch.no_grad():
                m.weight.copy_(tensor(L, "weight", [oc, shape[0], *k]))
                if "bias" in L:
                    m.bias.copy_(tensor(L, "bias", [oc]))
            shape = (oc, _window_out(shape[1], k[0], s[0], p[0]),
                     _window_out(shape[2], k[1], s[1], p[1]))
        elif t == "batchnorm":
            c = shape[0]
            m = (nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d)(c, eps=L["eps"])
            with torch.no_grad():
                m.weight.copy_(tensor(L, "weight", [c]))
                m.bias.copy_(tensor(L, "bias", [c]))
                m.running_mean.copy_(tensor(L, "mean", [c]))
                m.running_var.copy_(tensor(L, "var", [c]))
        elif t in ("relu", "tanh", "sigmoid"):
            m = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}[t]()
        elif t == "elu":
            m = nn.ELU(alpha=L["alpha"])
        elif t in ("maxpool2d", "avgpool2d"):
            k, s = tuple(L["kernel"]), tuple(L["stride"])
            m = nn.MaxPool2d(k, s) if t == "maxpool2d" else nn.AvgPool2d(k, s)
            shape = (shape[0], _window_out(shape[1], k[0], s[0], 0),
                     _window_out(shape[2], k[1], s[1], 0))
        elif t in ("global_avgpool", "global_maxpool"):
            mods.append(nn.AdaptiveAvgPool2d(1) if t == "global_avgpool" else nn.AdaptiveMaxPool2d(1))
            m = nn.Flatten()
            shape = (shape[0],)
        elif t == "flatten":
            m = nn.Flatten()
            shape = (int(np.prod(shape)),)
        elif t == "dense":
            n_out = L["out_features"]
            m = nn.Linear(shape[0], n_out, bias="bias" in L)
            with torch.no_grad():
                m.weight.copy_(tensor(L, "weight", [n_out, shape[0]]))
                if "bias" in L:
                    m.bias.copy_(tensor(L, "bias", [n_out]))
            shape = (n_out,)
        elif t == "dropout":
            m = nn.Dropout(L["p"])
        elif t == "softmax":
            m = nn.Softmax(dim=-1)
        else:
            raise GModelError(f"{path}: layer {idx}: unknown type {t!r}")
        mods.append(m)
    if shape != (len(header["genres"]),):
        raise GModelError(f"{path}: the model outputs {list(shape)}, but there are "
                          f"{len(header['genres'])} genres")
    return nn.Sequential(*mods).eval(), header
