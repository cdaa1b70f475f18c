"""efficientat.py - the EfficientAT "mn04_as" AudioSet tagger in PyTorch, our own
definition, written from the facts in ../shared/models/efficientat-mn04/README.md
(gathered in train/mn04.py).

A MobileNetV3 at width 0.4 (993,531 parameters) over a Kaldi-style log-mel at
32 kHz. Its module tree is laid out so that the published checkpoint's state
dict (312 tensors) loads into it key for key:

    features.0              conv 3x3 /2 (1 -> 8) + BN + hardswish
    features.1 .. 15        inverted-residual blocks, each `block` a Sequential
                            of [expand 1x1 + BN + act] (absent when expanded ==
                            in), [depthwise kxk /s + BN + act], [squeeze-
                            excitation] where marked, [project 1x1 + BN]
    features.16             conv 1x1 64 -> 384 + BN + hardswish
    classifier              pool, flatten, linear 384 -> 512, hardswish,
                            dropout, linear 512 -> 527 (AudioSet logits)

forward() returns (audioset_logits [B, 527], embedding [B, 384]); the
embedding is the mean of features.16's map over frequency and time.

front_end() is the reference log-mel the C front end (src/mel.c, kind
"logmel" with the parameters of FEATURES) is tested against: pre-emphasis,
torch.stft, torchaudio's Kaldi mel banks, log(x + 1e-5), (x + 4.5) / 5.

What it does not do: convert the checkpoint to a .gmodel (train/mn04.py,
scripts/get-model), train a genre head (train/backbone_head.py).
"""
import os
import sys

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mn04 import (BLOCKS, BN_EPS, FEATURES, HIDDEN,  # noqa: E402
                  LAST_CHANNELS, N_CLASSES, STEM_CHANNELS)


def _act(name):
    return nn.ReLU() if name == "relu" else nn.Hardswish()


def _conv_bn(cin, cout, k, stride=1, groups=1, act=None):
    layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout, eps=BN_EPS)]
    if act:
        layers.append(_act(act))
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    """Channel gates from the map's mean over frequency and time: fc1, ReLU,
    fc2, sigmoid (not hard-sigmoid). Lives at `conc_se_layers.0` so that the
    checkpoint's keys fit."""

    class _Gate(nn.Module):
        def __init__(self, channels, squeeze):
            super().__init__()
            self.fc1 = nn.Linear(channels, squeeze)
            self.fc2 = nn.Linear(squeeze, channels)

        def forward(self, x):
            s = x.mean(dim=(2, 3))
            s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
            return x * s[:, :, None, None]

    def __init__(self, channels, squeeze):
        super().__init__()
        self.conc_se_layers = nn.ModuleList([self._Gate(channels, squeeze)])

    def forward(self, x):
        return self.conc_se_layers[0](x)


class InvertedResidual(nn.Module):
    def __init__(self, cin, k, cexp, cout, se, act, stride, residual):
        super().__init__()
        layers = []
        if cexp != cin:
            layers.append(_conv_bn(cin, cexp, 1, act=act))
        layers.append(_conv_bn(cexp, cexp, k, stride, groups=cexp, act=act))
        if se:
            layers.append(SqueezeExcite(cexp, se))
        layers.append(_conv_bn(cexp, cout, 1))
        self.block = nn.Sequential(*layers)
        self.residual = residual

    def forward(self, x):
        y = self.block(x)
        return x + y if self.residual else y


class MN04(nn.Module):
    def __init__(self):
        super().__init__()
        feats = [_conv_bn(1, STEM_CHANNELS, 3, 2, act="hardswish")]
        feats += [InvertedResidual(*b) for b in BLOCKS]
        feats.append(_conv_bn(BLOCKS[-1][3], LAST_CHANNELS, 1, act="hardswish"))
        self.features = nn.Sequential(*feats)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(LAST_CHANNELS, HIDDEN),
            nn.Hardswish(), nn.Dropout(0.2), nn.Linear(HIDDEN, N_CLASSES))

    def forward(self, x):
        """x: [B, 1, 128, frames] log-mel -> (AudioSet logits, embedding)."""
        fmap = self.features(x)
        return self.classifier(fmap), fmap.mean(dim=(2, 3))


def load_checkpoint(path):
    """The published checkpoint in an MN04, eval mode."""
    net = MN04()
    state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    return net.eval()


def mel_banks(p=FEATURES):
    """[n_mels, n_fft/2 + 1]: torchaudio's Kaldi banks over the bins below
    Nyquist, the Nyquist bin weighted 0."""
    banks, _ = torchaudio.compliance.kaldi.get_mel_banks(
        p["n_mels"], p["n_fft"], float(p["sample_rate"]), p["fmin"], p["fmax"],
        100.0, -500.0, 1.0)
    return F.pad(banks, (0, 1))


def front_end(x, p=FEATURES):
    """x: [B, samples] float audio at 32 kHz -> [B, 1, n_mels, frames]. A
    signal of 96,000 samples (3 s) gives 300 frames: pre-emphasis leaves one
    sample fewer, and centred frames every 320 of 95,999 samples make 300."""
    x = x[:, 1:] - p["preemphasis"] * x[:, :-1]
    window = torch.hann_window(p["win_length"], periodic=False, dtype=x.dtype)
    spec = torch.stft(x, p["n_fft"], hop_length=p["hop_length"], win_length=p["win_length"],
                      window=window, center=True, pad_mode="reflect", normalized=False,
                      return_complex=True)
    power = spec.real ** 2 + spec.imag ** 2
    mel = torch.matmul(mel_banks(p).to(x.dtype), power)
    return ((torch.log(mel + p["log_offset"]) - p["norm_mean"]) / p["norm_std"])[:, None]
