"""The network designs compared in train/, as PyTorch modules that
train/gmodel.py can export (plain nn.Sequential of layers genred's C engine
runs).

    a  4 conv layers of 3x3 kernels growing to 512 channels, then 3 dense
       layers with dropout 0.6 (a VGG-like 4-layer CNN).
    b  5 x [conv 5x5 + batch-norm + ReLU + max-pool], 8-16-32-64-128
       filters, dropout 0.2, one dense read-out; Adam at lr 0.0015.
    c  fully convolutional 5-layer net in the style of Choi et al. (FCN-5):
       3x3 conv + BN + ELU + max-pool, global max pool, linear read-out.
    d  the deep softmax autoencoder on the raw waveform: dense encoder
       500 -> 64, decoder 64 -> 500, a softmax classifier on the 64-d code,
       trained on cross-entropy + 0.9 x reconstruction error. Only encoder and
       classifier are exported; the decoder exists for training.
    e  a small all-convolutional net for tiny data and a 2-core CPU: a 2x2
       average pool first (64 mel bands x 46 ms frames are plenty for genre,
       and every later layer costs a quarter), then 4 x [conv 3x3 + BN + ReLU
       + max-pool] with 16-32-64-128 filters, a fifth conv with 128, global
       average pooling, dropout 0.5, one linear layer: ~0.25 M parameters, no
       big dense layer to memorise the training tracks, ~17 M multiply-adds
       per chunk (b: ~55 M, a: ~120 M).

Every builder takes (n_genres, input_shape) with input_shape the model's
(C, H, W) input, and returns logits (no softmax; the exporter appends it).

What it does not do: training (train.py), export (gmodel.py).
"""
import functools

from torch import nn


def arch_a(n_genres, input_shape=(1, 128, 128)):
    def block(i, o, pool):
        return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(pool)]
    _, h, w = input_shape
    flat = 512 * (h // 64) * (w // 64)
    return nn.Sequential(*block(1, 64, 4), *block(64, 128, 4), *block(128, 256, 2),
                         *block(256, 512, 2), nn.Flatten(),
                         nn.Dropout(0.6), nn.Linear(flat, 512), nn.ReLU(),
                         nn.Dropout(0.6), nn.Linear(512, 128), nn.ReLU(),
                         nn.Dropout(0.6), nn.Linear(128, n_genres))


def arch_b(n_genres, input_shape=(1, 128, 128)):
    layers, c = [], 1
    for o in (8, 16, 32, 64, 128):
        layers += [nn.Conv2d(c, o, 5, padding=2), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2)]
        c = o
    _, h, w = input_shape
    return nn.Sequential(*layers, nn.Flatten(), nn.Dropout(0.2),
                         nn.Linear(128 * (h // 32) * (w // 32), n_genres))


def arch_c(n_genres, input_shape=(1, 128, 128)):
    layers, c = [], 1
    for o, pool in ((32, 2), (64, 2), (64, 2), (128, 2), (128, 4)):
        layers += [nn.Conv2d(c, o, 3, padding=1), nn.BatchNorm2d(o), nn.ELU(), nn.MaxPool2d(pool)]
        c = o
    return nn.Sequential(*layers, nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Dropout(0.3),
                         nn.Linear(128, n_genres))


def arch_e(n_genres, input_shape=(1, 128, 128), width=1.0):
    """Design (e); width scales every layer's channels (16-32-64-128-128 at 1)."""
    ch = [int(round(k * width)) for k in (16, 32, 64, 128, 128)]
    layers, c = [nn.AvgPool2d(2)], 1
    for o in ch[:4]:
        layers += [nn.Conv2d(c, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2)]
        c = o
    layers += [nn.Conv2d(c, ch[4], 3, padding=1), nn.BatchNorm2d(ch[4]), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5),
                         nn.Linear(ch[4], n_genres))


class SoftmaxAutoencoder(nn.Module):
    """Design (d). forward() returns (logits, reconstruction); classifier()
    is the exportable part: flatten, encoder, softmax read-out."""

    def __init__(self, n_genres, input_shape=(1, 1, 500), code=64):
        super().__init__()
        n = input_shape[0] * input_shape[1] * input_shape[2]
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(n, code), nn.Sigmoid())
        self.decoder = nn.Linear(code, n)
        self.head = nn.Linear(code, n_genres)

    def forward(self, x):
        z = self.encoder(x)
        return self.head(z), self.decoder(z)

    def classifier(self):
        return nn.Sequential(*self.encoder, self.head)


def arch_d(n_genres, input_shape=(1, 1, 500)):
    return SoftmaxAutoencoder(n_genres, input_shape)


# Sizes of design (e) for the student (train/distill.py): e_s half as wide,
# e_l 1.5 x, e_xl 2 x (about 0.3, 2.2 and 3.9 x the multiply-adds).
E_WIDTHS = {"e_s": 0.5, "e_l": 1.5, "e_xl": 2.0}
ARCHS = {"a": arch_a, "b": arch_b, "c": arch_c, "d": arch_d, "e": arch_e,
         **{k: functools.partial(arch_e, width=w) for k, w in E_WIDTHS.items()}}
# Learning rates of the designs' own papers (a, c: 1e-3; b: 0.0015 with Adam).
LR = {"a": 1e-3, "b": 1.5e-3, "c": 1e-3, "d": 1e-3, "e": 2e-3, **{k: 2e-3 for k in E_WIDTHS}}
# Which input each design reads: genred feature kind.
INPUT = {"a": "logmel", "b": "logmel", "c": "logmel", "d": "waveform", "e": "logmel",
         **{k: "logmel" for k in E_WIDTHS}}
RECONSTRUCTION_WEIGHT = 0.9   # design (d): loss = CE + 0.9 * MSE(reconstruction)
