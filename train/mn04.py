"""mn04.py - EfficientAT "mn04_as", the pretrained AudioSet backbone: its
facts, a reader for its published checkpoint, and its conversion to a
.gmodel file. Python standard library only, so that scripts/get-model runs on
a server without NumPy or PyTorch.

The facts are those of ../shared/models/efficientat-mn04/README.md: the
front end, the 15 inverted-residual blocks, the head, and the AudioSet
classes genred reads (genres, the curated tags, the music verdict).
train/efficientat.py builds the same network in PyTorch from them.

read_checkpoint() reads the checkpoint (a PyTorch zip archive holding a
pickled state dict) without PyTorch: its unpickler knows only the handful of
names a plain state dict uses and refuses everything else, so a file cannot
run code, as torch.load(..., weights_only=True) promises.

convert() lays the network out as .gmodel layers (format version 2): every
block's output is named ("b1" .. "b15"), a residual block ends in an add of
its input and its projection; the mean of features.16's map is named
"embedding"; the AudioSet head ends in "audioset_logits" and "audioset"
(sigmoid). A genre head (ours, committed as JSON; or the zero-shot one that
reads the 10 AudioSet genre logits) reads those names and ends the layer
list, its last dense layer named "genre_logits", its softmax "genres". Batch-norms are kept as written; genred folds them at load.

What it does not do: download (scripts/get-model), train the genre head
(train/backbone_head.py), run the network (src/, train/efficientat.py).
"""
import array
import io
import pickle
import sys
import zipfile

NAME = "efficientat-mn04"
CHECKPOINT = {
    "file": "mn04_as_mAP_432.pt",
    "url": "https://github.com/fschmid56/EfficientAT/releases/download/v0.0.1/"
           "mn04_as_mAP_432.pt",
    "sha256": "899a8c6217063f6941793102a2780b3dd788ab11fce468d9cf5f0577c453321c",
    "tensors": 312,
}

# The front end as a .gmodel "features" object (docs/model-format.md).
FEATURES = {
    "kind": "logmel", "sample_rate": 32000, "preemphasis": 0.97,
    "n_fft": 1024, "win_length": 800, "window": "hann_symmetric", "hop_length": 320,
    "n_mels": 128, "chunk_frames": 300, "fmin": 0.0, "fmax": 15000.0,
    "mel_scale": "kaldi", "mel_norm": "none", "power": 2.0,
    "log": "ln", "log_offset": 1e-5, "norm_mean": -4.5, "norm_std": 5.0,
}

# (in, kernel, expanded, out, SE squeeze or 0, activation, stride, residual)
BLOCKS = [
    (8, 3, 8, 8, 0, "relu", 1, True),
    (8, 3, 24, 16, 0, "relu", 2, False),
    (16, 3, 32, 16, 0, "relu", 1, True),
    (16, 5, 32, 16, 8, "relu", 2, False),
    (16, 5, 48, 16, 16, "relu", 1, True),
    (16, 5, 48, 16, 16, "relu", 1, True),
    (16, 3, 96, 32, 0, "hardswish", 2, False),
    (32, 3, 80, 32, 0, "hardswish", 1, True),
    (32, 3, 72, 32, 0, "hardswish", 1, True),
    (32, 3, 72, 32, 0, "hardswish", 1, True),
    (32, 3, 192, 48, 48, "hardswish", 1, False),
    (48, 3, 272, 48, 72, "hardswish", 1, True),
    (48, 5, 272, 64, 72, "hardswish", 2, False),
    (64, 5, 384, 64, 96, "hardswish", 1, True),
    (64, 5, 384, 64, 96, "hardswish", 1, True),
]
STEM_CHANNELS = 8
LAST_CHANNELS = 384       # features.16 output: the embedding's width
HIDDEN = 512
N_CLASSES = 527
BN_EPS = 0.001

# AudioSet output indices (audioset_class_labels_indices.csv).
SPEECH, MUSIC, SILENCE = 0, 137, 500
GENRE_CLASSES = {  # our genre name -> AudioSet class
    "blues": 251, "classical": 237, "country": 229, "disco": 236, "hiphop": 217,
    "jazz": 235, "metal": 220, "pop": 216, "reggae": 228, "rock": 219,
}
GENRES = sorted(GENRE_CLASSES)

# A chunk is music when Music is at least as likely as each of Speech,
# Silence and the noises (Noise, Static, White noise, Pink noise). Speech and
# Silence alone let white noise through: there, Music (0.03) still beats them
# while Static (0.5) and White noise (0.34) do not. On half of the GTZAN
# tracks (1239 chunks) one chunk is judged not music (a quiet classical passage).
NOISES = [513, 515, 520, 521]
MUSIC_VERDICT = {"music": [MUSIC], "not_music": [SPEECH, SILENCE] + NOISES}

# The tags genred reports: (AudioSet index, label, group). Chosen from the
# ontology's instruments, singing and music moods; labels shortened from its
# display names. tests/test_backbone.py checks every index against the
# class list.
TAGS = [
    (27, "Singing", "vocal"), (28, "Choir", "vocal"), (32, "Male singing", "vocal"),
    (33, "Female singing", "vocal"), (34, "Child singing", "vocal"),
    (35, "Synthetic singing", "vocal"), (36, "Rapping", "vocal"), (37, "Humming", "vocal"),
    (40, "Whistling", "vocal"), (218, "Beatboxing", "vocal"),
    (140, "Guitar", "instrument"), (141, "Electric guitar", "instrument"),
    (142, "Bass guitar", "instrument"), (143, "Acoustic guitar", "instrument"),
    (144, "Slide guitar", "instrument"), (147, "Banjo", "instrument"),
    (148, "Sitar", "instrument"), (149, "Mandolin", "instrument"),
    (151, "Ukulele", "instrument"), (153, "Piano", "instrument"),
    (154, "Electric piano", "instrument"), (155, "Organ", "instrument"),
    (157, "Hammond organ", "instrument"), (158, "Synthesizer", "instrument"),
    (160, "Harpsichord", "instrument"), (162, "Drum kit", "instrument"),
    (163, "Drum machine", "instrument"), (170, "Tabla", "instrument"),
    (180, "Marimba", "instrument"), (182, "Vibraphone", "instrument"),
    (183, "Steelpan", "instrument"), (184, "Orchestra", "instrument"),
    (185, "Brass", "instrument"), (186, "French horn", "instrument"),
    (187, "Trumpet", "instrument"), (188, "Trombone", "instrument"),
    (190, "String section", "instrument"), (191, "Violin", "instrument"),
    (193, "Cello", "instrument"), (194, "Double bass", "instrument"),
    (196, "Flute", "instrument"), (197, "Saxophone", "instrument"),
    (198, "Clarinet", "instrument"), (199, "Harp", "instrument"),
    (208, "Harmonica", "instrument"), (209, "Accordion", "instrument"),
    (210, "Bagpipes", "instrument"), (215, "Scratching", "instrument"),
    (276, "Happy", "mood"), (277, "Funny", "mood"), (278, "Sad", "mood"),
    (279, "Tender", "mood"), (280, "Exciting", "mood"), (281, "Angry", "mood"),
    (282, "Scary", "mood"),
]

# A song's mean tag probability below this says nothing: AudioSet
# probabilities are small on real songs (on GTZAN excerpts: Rapping 0.29 on
# hip-hop, Violin 0.27 on classical, most tags under 0.05).
TAG_FLOOR = 0.05

LICENSE = """\
EfficientAT (github.com/fschmid56/EfficientAT), checkpoint mn04_as_mAP_432:

MIT License

Copyright (c) 2022 Florian Schmid

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


class ConvertError(ValueError):
    """A checkpoint or head that is not what this converter expects."""


# ---- reading the checkpoint ---------------------------------------------------

class Tensor:
    """A float32 tensor read from the checkpoint: shape and flat values."""

    def __init__(self, shape, values):
        self.shape = tuple(shape)
        self.values = values          # array('f'), C order

    def __repr__(self):
        return f"Tensor{self.shape}"


_STORAGE_TYPES = {"FloatStorage": ("f", 4), "LongStorage": ("q", 8)}


class _Storage:
    def __init__(self, kind, raw):
        code, size = _STORAGE_TYPES[kind]
        if len(raw) % size:
            raise ConvertError(f"a {kind} of {len(raw)} bytes")
        self.code = code
        self.values = array.array(code)
        self.values.frombytes(raw)
        if sys.byteorder != "little":
            self.values.byteswap()


def _rebuild_tensor(storage, offset, size, stride, *_rest):
    n = 1
    for d in size:
        n *= d
    # A plain state dict holds contiguous tensors: C-order strides.
    want, acc = [], 1
    for d in reversed(size):
        want.append(acc)
        acc *= d
    if tuple(stride) != tuple(reversed(want)) and n > 1:
        raise ConvertError(f"a tensor with strides {stride} is not contiguous")
    if offset < 0 or offset + n > len(storage.values):
        raise ConvertError("a tensor reaches outside its storage")
    values = storage.values[offset:offset + n]
    return Tensor(size, values) if storage.code == "f" else None


class _Unpickler(pickle.Unpickler):
    """The names a state dict of tensors needs, and nothing else."""

    def __init__(self, file, archive, prefix):
        super().__init__(file)
        self.archive, self.prefix = archive, prefix

    def find_class(self, module, name):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        if module == "torch" and name in _STORAGE_TYPES:
            return name
        raise ConvertError(f"the checkpoint asks for {module}.{name}, which a plain "
                           "state dict never does: refused")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and pid[1] in _STORAGE_TYPES):
            raise ConvertError(f"unexpected persistent id {pid!r}")
        key = str(pid[2])
        if not key.isdigit():
            raise ConvertError(f"unexpected storage key {key!r}")
        return _Storage(pid[1], self.archive.read(f"{self.prefix}data/{key}"))


def read_checkpoint(path):
    """{name: Tensor} of the float tensors in a PyTorch checkpoint (integer
    bookkeeping such as num_batches_tracked is left out)."""
    try:
        with zipfile.ZipFile(path) as z:
            pkls = [n for n in z.namelist() if n.endswith("/data.pkl")]
            if len(pkls) != 1:
                raise ConvertError(f"{path}: not a PyTorch checkpoint (no single data.pkl)")
            prefix = pkls[0][:-len("data.pkl")]
            state = _Unpickler(io.BytesIO(z.read(pkls[0])), z, prefix).load()
    except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, KeyError) as e:
        raise ConvertError(f"{path}: not a readable PyTorch checkpoint: {e}") from e
    if not isinstance(state, dict):
        raise ConvertError(f"{path}: holds no state dict")
    return {k: v for k, v in state.items() if isinstance(v, Tensor)}


# ---- layers -------------------------------------------------------------------

class _Data:
    """The data section: tensors appended, references handed out."""

    def __init__(self):
        self.values = array.array("f")

    def ref(self, values, shape):
        n = 1
        for d in shape:
            n *= d
        if len(values) != n:
            raise ConvertError(f"{len(values)} values for shape {list(shape)}")
        r = {"offset": len(self.values), "shape": list(shape)}
        self.values.extend(values)
        return r

    def tobytes(self):
        v = array.array("f", self.values)
        if sys.byteorder != "little":
            v.byteswap()
        return v.tobytes()


class _Layers:
    def __init__(self, state):
        self.state, self.data, self.list, self.used = state, _Data(), [], set()

    def tensor(self, key, shape):
        t = self.state.get(key)
        if t is None:
            raise ConvertError(f"the checkpoint has no {key}")
        if t.shape != tuple(shape):
            raise ConvertError(f"{key} has shape {list(t.shape)}, expected {list(shape)}")
        self.used.add(key)
        return self.data.ref(t.values, shape)

    def add(self, layer, name=None, input=None):
        if name:
            layer["name"] = name
        if input:
            layer["input"] = input
        self.list.append(layer)

    def conv_bn(self, key, cin, cout, k, stride=1, groups=1, act=None, name=None):
        """conv (no bias) + BN [+ act]; key is the Sequential holding them."""
        self.add({"type": "conv2d", "out_channels": cout, "kernel": [k, k],
                  "stride": [stride, stride], "padding": [(k - 1) // 2] * 2,
                  "groups": groups,
                  "weight": self.tensor(f"{key}.0.weight", (cout, cin // groups, k, k))})
        self.add({"type": "batchnorm", "eps": BN_EPS,
                  "weight": self.tensor(f"{key}.1.weight", (cout,)),
                  "bias": self.tensor(f"{key}.1.bias", (cout,)),
                  "mean": self.tensor(f"{key}.1.running_mean", (cout,)),
                  "var": self.tensor(f"{key}.1.running_var", (cout,))},
                 name=None if act else name)
        if act:
            self.add({"type": act}, name=name)

    def dense(self, key, n_in, n_out, name=None):
        self.add({"type": "dense", "out_features": n_out,
                  "weight": self.tensor(f"{key}.weight", (n_out, n_in)),
                  "bias": self.tensor(f"{key}.bias", (n_out,))}, name=name)


def _backbone(L):
    L.conv_bn("features.0", 1, STEM_CHANNELS, 3, 2, act="hardswish", name="b0")
    for i, (cin, k, cexp, cout, se, act, stride, residual) in enumerate(BLOCKS, 1):
        key, part = f"features.{i}.block", 0
        if cexp != cin:
            L.conv_bn(f"{key}.{part}", cin, cexp, 1, act=act)
            part += 1
        L.conv_bn(f"{key}.{part}", cexp, cexp, k, stride, groups=cexp, act=act)
        part += 1
        if se:
            g = f"{key}.{part}.conc_se_layers.0"
            L.add({"type": "squeeze_excite", "squeeze": se,
                   "fc1_weight": L.tensor(f"{g}.fc1.weight", (se, cexp)),
                   "fc1_bias": L.tensor(f"{g}.fc1.bias", (se,)),
                   "fc2_weight": L.tensor(f"{g}.fc2.weight", (cexp, se)),
                   "fc2_bias": L.tensor(f"{g}.fc2.bias", (cexp,))})
            part += 1
        L.conv_bn(f"{key}.{part}", cexp, cout, 1, name=f"b{i}.proj" if residual else f"b{i}")
        if residual:
            L.add({"type": "add", "inputs": [f"b{i - 1}", f"b{i}.proj"]}, name=f"b{i}")
    L.conv_bn("features.16", BLOCKS[-1][3], LAST_CHANNELS, 1, act="hardswish")
    L.add({"type": "global_avgpool"}, name="embedding")
    L.dense("classifier.2", LAST_CHANNELS, HIDDEN)
    L.add({"type": "hardswish"})
    L.add({"type": "dropout", "p": 0.2})
    L.dense("classifier.5", HIDDEN, N_CLASSES, name="audioset_logits")
    L.add({"type": "sigmoid"}, name="audioset")


def zero_shot_head():
    """The head that needs no training: softmax over the 10 AudioSet genre
    logits, as a dense layer that selects them."""
    weight = [[1.0 if j == GENRE_CLASSES[g] else 0.0 for j in range(N_CLASSES)]
              for g in GENRES]
    return {"inputs": ["audioset_logits"], "genres": GENRES,
            "layers": [{"type": "dense", "out_features": len(GENRES), "weight": weight,
                        "bias": [0.0] * len(GENRES)}, {"type": "softmax"}],
            "training": {"head": "zero-shot: softmax over the AudioSet genre logits"}}


_HEAD_WIDTH = {"embedding": LAST_CHANNELS, "audioset_logits": N_CLASSES, "audioset": N_CLASSES}


def _genre_head(L, head):
    """Appends head's layers (plain JSON: inline weights) after the backbone."""
    inputs = head.get("inputs")
    if not (isinstance(inputs, list) and inputs and all(i in _HEAD_WIDTH for i in inputs)):
        raise ConvertError(f"head: 'inputs' must name some of {sorted(_HEAD_WIDTH)}")
    width = sum(_HEAD_WIDTH[i] for i in inputs)
    if len(inputs) > 1:
        L.add({"type": "concat", "inputs": list(inputs)})
    for n, layer in enumerate(head.get("layers") or []):
        t = layer.get("type")
        first = {"input": inputs[0]} if n == 0 and len(inputs) == 1 else {}
        if t == "dense":
            w, b = layer["weight"], layer.get("bias")
            out = layer["out_features"]
            if len(w) != out or any(len(row) != width for row in w):
                raise ConvertError(f"head layer {n}: weight is not [{out}][{width}]")
            flat = array.array("f", (float(x) for row in w for x in row))
            d = {"type": "dense", "out_features": out, "weight": L.data.ref(flat, (out, width))}
            if b is not None:
                d["bias"] = L.data.ref(array.array("f", map(float, b)), (out,))
            L.add(d, **first)
            width = out
        elif t in ("relu", "hardswish", "tanh", "sigmoid", "softmax"):
            L.add({"type": t}, **first)
        elif t == "dropout":
            L.add({"type": "dropout", "p": float(layer["p"])}, **first)
        else:
            raise ConvertError(f"head layer {n}: type {t!r} is not supported")
    if not L.list or L.list[-1]["type"] != "softmax":
        raise ConvertError("head: the last layer must be a softmax")
    # Named, so that `genred features --values genre_logits` gives a teacher's
    # logits (distillation, issue 13) and `--values genres` its probabilities.
    if len(L.list) >= 2 and "name" not in L.list[-2] and L.list[-2]["type"] == "dense":
        L.list[-2]["name"] = "genre_logits"
    L.list[-1]["name"] = "genres"
    if width != len(head["genres"]):
        raise ConvertError(f"head: outputs {width} values for {len(head['genres'])} genres")


def convert(state, head=None, version="1.0.0"):
    """Returns (header, data bytes) of the .gmodel for a state dict (from
    read_checkpoint()) and a genre head (a dict as train/backbone_head.py
    writes it; None: the zero-shot head)."""
    head = head or zero_shot_head()
    L = _Layers(state)
    _backbone(L)
    _genre_head(L, head)
    unused = sorted(set(state) - L.used)
    if unused:
        raise ConvertError(f"the checkpoint holds tensors this network does not use: "
                           f"{unused[:5]}")
    tags = [{"index": i, "label": label, "group": group} for i, label, group in TAGS]
    training = {"backbone": {"name": "EfficientAT mn04_as", "checkpoint": CHECKPOINT["file"],
                             "sha256": CHECKPOINT["sha256"], "source": CHECKPOINT["url"],
                             "trained_on": "AudioSet (527 classes), mAP 0.432"},
                "genre_head": head.get("training", {})}
    header = {
        "name": f"{NAME}-genres", "version": version,
        "description": "EfficientAT mn04 (AudioSet, 0.99 M parameters) with a genre head "
                       "trained on GTZAN by genred; also tags, an embedding and a music "
                       "verdict",
        "license": LICENSE, "genres": list(head["genres"]), "features": FEATURES,
        "input": [1, FEATURES["n_mels"], FEATURES["chunk_frames"]], "layers": L.list,
        "outputs": {"embedding": "embedding",
                    "tags": {"value": "audioset", "classes": tags,
                             "min_probability": TAG_FLOOR},
                    "music": dict(MUSIC_VERDICT, value="audioset")},
        "training": training,
    }
    return header, L.data.tobytes()
