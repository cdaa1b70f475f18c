"""test_backbone.py - the pretrained backbone (EfficientAT mn04) end to end:
conversion, C against PyTorch, and what the daemon answers with it.

- scripts/get-model converts ../shared's checkpoint (--from), refuses a file
  whose sha256 is not the published one, downloads from a mirror (--url, a
  local http.server) and writes the same bytes every time.
- train/mn04.py's reader (no PyTorch) gives the very tensors of
  torch.load(..., weights_only=True); its AudioSet indices name the classes
  the CSV beside the checkpoint says.
- Parity: on real GTZAN chunks, features from genred's own C front end
  (`genred features`) go through the C network (infer_npy) and through our
  PyTorch definition (train/efficientat.py) loaded with torch.load: genre
  probabilities, the 384-d embedding and the AudioSet probabilities agree
  within 1e-4. (The C front end against torchaudio is tests/test_mel.py.)
- The daemon with the converted model: genres, tags and the music verdict for
  music; `top` null and verdict not_music for speech (espeak-ng), silence and
  white noise; mixed for speech followed by music; ?embedding=1 is the mean of
  the chunks' embeddings; every answer matches openapi.yaml. The bundled CNN
  answers none of these fields.

Skips, with the reason, only when ../shared lacks the checkpoint.
"""
import http.server
import json
import os
import pathlib
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

ROOT = pathlib.Path(os.environ.get("GENRED_SOURCE", pathlib.Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(ROOT / "train"))
import efficientat  # noqa: E402
import mn04  # noqa: E402

PARITY_ATOL = 1e-4
# genred refuses GENRED_* variables it does not know; meson sets some for pytest.
GENRED_ENV = {k: v for k, v in os.environ.items() if not k.startswith("GENRED_")}


@pytest.fixture(scope="module")
def checkpoint():
    shared = pathlib.Path(os.environ.get("GENRED_SHARED", ROOT.parent / "shared"))
    path = shared / "models" / "efficientat-mn04" / mn04.CHECKPOINT["file"]
    if not path.is_file():
        pytest.skip(f"{path} is missing: the backbone tests need ../shared's checkpoint")
    return path


def get_model(*args, check=True):
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "get-model"), *map(str, args)],
                       capture_output=True, text=True, timeout=300)
    if check:
        assert r.returncode == 0, r.stderr
    return r


@pytest.fixture(scope="module")
def backbone_model(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    get_model(mn04.NAME, "--from", checkpoint, "--out", out)
    path = out / f"{mn04.NAME}-genres.gmodel"
    assert path.is_file()
    return path


@pytest.fixture(scope="module")
def head():
    path = ROOT / "models" / f"{mn04.NAME}-genre-head.json"
    if path.is_file():
        return json.loads(path.read_text())
    return mn04.zero_shot_head()


# ---- conversion ----------------------------------------------------------------

def test_get_model_is_deterministic_and_checks_the_checksum(checkpoint, backbone_model, tmp_path):
    again = get_model(mn04.NAME, "--from", checkpoint, "--out", tmp_path)
    assert "Done" in again.stderr and "serve" in again.stderr
    assert (tmp_path / backbone_model.name).read_bytes() == backbone_model.read_bytes()

    bad = tmp_path / "bad.pt"
    blob = bytearray(checkpoint.read_bytes())
    blob[-1] ^= 1
    bad.write_bytes(bytes(blob))
    r = get_model(mn04.NAME, "--from", bad, "--out", tmp_path / "x", check=False)
    assert r.returncode != 0 and "sha256" in r.stderr
    assert not (tmp_path / "x" / backbone_model.name).exists()

    r = get_model("no-such-model", check=False)
    assert r.returncode == 2 and mn04.NAME in r.stderr


def test_get_model_downloads_from_a_mirror(checkpoint, backbone_model, tmp_path):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(checkpoint.parent), **kw)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{checkpoint.name}"
        r = get_model(mn04.NAME, "--url", url, "--out", tmp_path)
        assert "Downloading" in r.stderr
        assert (tmp_path / backbone_model.name).read_bytes() == backbone_model.read_bytes()
        r = get_model(mn04.NAME, "--url", url + ".missing", "--out", tmp_path / "y", check=False)
        assert r.returncode != 0 and "download failed" in r.stderr
    finally:
        server.shutdown()
        server.server_close()


def test_reader_equals_torch_load(checkpoint):
    ours = mn04.read_checkpoint(checkpoint)
    theirs = torch.load(checkpoint, map_location="cpu", weights_only=True)
    floats = {k: v for k, v in theirs.items() if v.dtype == torch.float32}
    assert set(ours) == set(floats) and len(theirs) == mn04.CHECKPOINT["tensors"]
    for k, t in floats.items():
        assert ours[k].shape == tuple(t.shape), k
        assert np.array_equal(np.frombuffer(ours[k].values.tobytes(), "<f4"),
                              t.numpy().reshape(-1)), k


def test_reader_refuses_code(tmp_path):
    # A pickle that names anything but a state dict's classes is refused,
    # before it could run: what weights_only=True promises.
    import pickle
    import zipfile

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo owned",))

    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"x": Evil()}, protocol=2))
    with pytest.raises(mn04.ConvertError, match="refused"):
        mn04.read_checkpoint(path)


def test_audioset_indices_name_their_classes(checkpoint):
    import csv
    with open(checkpoint.parent / "audioset_class_labels_indices.csv") as f:
        names = {int(r["index"]): r["display_name"].lower() for r in csv.DictReader(f)}
    assert len(names) == mn04.N_CLASSES
    for genre, i in mn04.GENRE_CLASSES.items():
        assert genre.replace("hiphop", "hip hop").replace("metal", "heavy metal") in names[i]
    assert names[mn04.MUSIC] == "music" and names[mn04.SPEECH] == "speech"
    assert names[mn04.SILENCE] == "silence"
    assert all("noise" in names[i] or names[i] == "static" for i in mn04.NOISES)
    for i, label, group in mn04.TAGS:
        assert label.split()[0].lower() in names[i], (i, label, names[i])
        assert group in ("instrument", "vocal", "mood")
    assert len({i for i, _, _ in mn04.TAGS}) == len(mn04.TAGS)


# ---- C against PyTorch ---------------------------------------------------------

def torch_head(head, emb, logits):
    """The genre head's JSON, run in PyTorch."""
    parts = {"embedding": emb, "audioset_logits": logits, "audioset": torch.sigmoid(logits)}
    x = torch.cat([parts[n] for n in head["inputs"]], dim=1)
    for layer in head["layers"]:
        t = layer["type"]
        if t == "dense":
            w = torch.tensor(layer["weight"], dtype=torch.float32)
            b = torch.tensor(layer.get("bias") or [0.0] * w.shape[0], dtype=torch.float32)
            x = x @ w.T + b
        elif t == "softmax":
            x = torch.softmax(x, dim=1)
        elif t == "dropout":
            pass
        else:
            x = {"relu": torch.relu, "hardswish": torch.nn.functional.hardswish,
                 "tanh": torch.tanh, "sigmoid": torch.sigmoid}[t](x)
    return x


def test_c_equals_pytorch_on_real_chunks(genred_bin, infer_tool, backbone_model, checkpoint,
                                         head, gtzan_dir, tmp_path):
    files = [sorted((gtzan_dir / g).glob("*.flac"))[1] for g in ("classical", "hiphop", "metal")]
    feats = []
    for i, f in enumerate(files):
        out = tmp_path / f"f{i}.npy"
        r = subprocess.run([str(genred_bin), "features", "--model", str(backbone_model), str(f),
                            "-o", str(out)], capture_output=True, text=True, timeout=120, env=GENRED_ENV)
        assert r.returncode == 0, r.stderr
        feats.append(np.load(out))
    x = np.concatenate(feats)
    assert x.shape[1:] == (128, 300) and len(x) >= 20
    np.save(tmp_path / "in.npy", x)
    r = subprocess.run([infer_tool, str(backbone_model), str(tmp_path / "in.npy"),
                        str(tmp_path / "out.npy"), "8"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    c = np.load(tmp_path / "out.npy")

    net = efficientat.load_checkpoint(checkpoint)
    with torch.no_grad():
        logits, emb = net(torch.from_numpy(x)[:, None])
        genres = torch_head(head, emb, logits).numpy()
    g, e = len(mn04.GENRES), mn04.LAST_CHANNELS
    # The row: genres, then the exported values in the order of the file's
    # outputs (embedding, then the AudioSet probabilities tags and music read).
    assert c.shape == (len(x), g + e + mn04.N_CLASSES)
    for what, got, want in [("genres", c[:, :g], genres),
                            ("embedding", c[:, g:g + e], emb.numpy()),
                            ("audioset", c[:, g + e:], torch.sigmoid(logits).numpy())]:
        err = np.abs(got - want).max()
        assert err <= PARITY_ATOL, f"{what}: C and PyTorch differ by {err:.2e}"
    # Not trivially equal: the chunks differ, and so do their answers.
    assert np.abs(np.diff(genres, axis=0)).max() > 0.1


def test_features_values_are_the_networks_inner_values(genred_bin, backbone_model, checkpoint,
                                                       gtzan_dir, tmp_path):
    # What a head is trained on (train/backbone_head.py): genred's own
    # front end and network give the embedding and the AudioSet logits.
    song = sorted((gtzan_dir / "jazz").glob("*.flac"))[0]
    for name, args in (("x", []), ("v", ["--values", "embedding,audioset_logits"])):
        r = subprocess.run([str(genred_bin), "features", "--model", str(backbone_model), *args,
                            str(song), "-o", str(tmp_path / f"{name}.npy")],
                           capture_output=True, text=True, timeout=120, env=GENRED_ENV)
        assert r.returncode == 0, r.stderr
    x, v = np.load(tmp_path / "x.npy"), np.load(tmp_path / "v.npy")
    assert v.shape == (len(x), mn04.LAST_CHANNELS + mn04.N_CLASSES)
    net = efficientat.load_checkpoint(checkpoint)
    with torch.no_grad():
        logits, emb = net(torch.from_numpy(x)[:, None])
    assert np.abs(v[:, :mn04.LAST_CHANNELS] - emb.numpy()).max() <= PARITY_ATOL
    assert np.abs(v[:, mn04.LAST_CHANNELS:] - logits.numpy()).max() <= PARITY_ATOL
    r = subprocess.run([str(genred_bin), "features", "--model", str(backbone_model), "--values",
                        "nope", str(song), "-o", str(tmp_path / "n.npy")],
                       capture_output=True, text=True, timeout=120, env=GENRED_ENV)
    assert r.returncode == 1 and "named 'nope'" in r.stderr


# ---- the daemon ----------------------------------------------------------------

@pytest.fixture(scope="module")
def spoken(tmp_path_factory):
    """Speech, silence, white noise, and speech then music, as WAV files."""
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is needed (Debian package {tool})", pytrace=False)
    d = tmp_path_factory.mktemp("spoken")
    text = ("Welcome back to the show. Today we look at how printing changed the way "
            "people shared ideas, and our guest, a historian, tells us about the first "
            "workshops and the books they made. After the break we take your questions, "
            "so stay with us, and thank you for listening to this episode.")
    raw = d / "speech-raw.wav"
    subprocess.run(["espeak-ng", "-w", str(raw), text], check=True, timeout=60)
    files = {"speech": d / "speech.wav", "silence": d / "silence.wav",
             "noise": d / "noise.wav"}
    subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", str(files["speech"])],
                   check=True, timeout=60)
    subprocess.run(["sox", "-n", "-r", "16000", "-c", "1", str(files["silence"]), "trim", "0",
                    "20"], check=True, timeout=60)
    subprocess.run(["sox", "-n", "-r", "16000", "-c", "1", str(files["noise"]), "synth", "20",
                    "whitenoise", "vol", "0.3"], check=True, timeout=60)
    return files


def classify(d, path, query=""):
    r = d.request("POST", "/v1/classify" + query, data=pathlib.Path(path).read_bytes(),
                  headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def backbone_daemon(genred_bin, source_dir, backbone_model, tmp_path_factory):
    from conftest import Daemon, _base_flags, _stop_all
    flags = _base_flags(source_dir, backbone_model)
    d = Daemon(genred_bin, flags, tmp_path_factory.mktemp("bb") / "stderr.log")
    yield d
    _stop_all([d])


def test_music_gets_genres_tags_and_verdict(backbone_daemon, audio, api, check_classify):
    ans = classify(backbone_daemon, audio.song_mp3, "?segments=1&embedding=1")
    api.validate(ans, "ClassifyResult")
    check_classify(ans)
    assert ans["model"]["name"] == f"{mn04.NAME}-genres"
    assert ans["music"]["verdict"] == "music" and ans["music"]["share"] >= 0.9
    assert ans["top"] == "blues"
    assert ans["tags"], "no tag for a blues song"
    groups = {}
    for t in ans["tags"]:
        groups.setdefault(t["group"], []).append(t["probability"])
        assert t["probability"] >= mn04.TAG_FLOOR
    assert all(len(v) <= 3 and v == sorted(v, reverse=True) for v in groups.values())
    assert len(ans["embedding"]) == mn04.LAST_CHANNELS


def test_embedding_is_the_mean_of_the_chunks(backbone_daemon, genred_bin, infer_tool,
                                             backbone_model, audio, tmp_path):
    ans = classify(backbone_daemon, audio.excerpt_flac, "?embedding=1")
    r = subprocess.run([str(genred_bin), "features", "--model", str(backbone_model),
                        str(audio.excerpt_flac), "-o", str(tmp_path / "f.npy")],
                       capture_output=True, text=True, timeout=120, env=GENRED_ENV)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([infer_tool, str(backbone_model),
                        str(tmp_path / "f.npy"), str(tmp_path / "o.npy")],
                       capture_output=True, text=True, timeout=120, env=GENRED_ENV)
    assert r.returncode == 0, r.stderr
    rows = np.load(tmp_path / "o.npy")
    g = len(mn04.GENRES)
    want = rows[:, g:g + mn04.LAST_CHANNELS].mean(axis=0)
    assert len(rows) == ans["chunks"]
    assert np.abs(np.array(ans["embedding"]) - want).max() <= 1e-5
    # Without the flag, no embedding.
    assert "embedding" not in classify(backbone_daemon, audio.excerpt_flac)


@pytest.mark.parametrize("kind", ["speech", "silence", "noise"])
def test_not_music_gets_no_genre(backbone_daemon, spoken, api, check_classify, kind):
    ans = classify(backbone_daemon, spoken[kind], "?segments=1")
    api.validate(ans, "ClassifyResult")
    check_classify(ans)
    assert ans["music"]["verdict"] == "not_music", ans["music"]
    assert ans["top"] is None and ans["top3"] == []


def test_speech_then_music_is_mixed(backbone_daemon, spoken, audio, api, check_classify,
                                    tmp_path):
    # Speech cut to 36 s (12 chunks), then the song: with trim=0 the song's
    # chunks are the ones it has alone.
    speech36, mixed = tmp_path / "speech36.wav", tmp_path / "mixed.wav"
    subprocess.run(["sox", str(spoken["speech"]), str(spoken["speech"]), str(speech36),
                    "pad", "0", "36", "trim", "0", "36"], check=True, timeout=60)
    subprocess.run(["sox", str(speech36), str(audio.excerpt_flac), "-r", "16000", "-c", "1",
                    str(mixed)], check=True, timeout=60)
    ans = classify(backbone_daemon, mixed, "?segments=1&trim=0")
    api.validate(ans, "ClassifyResult")
    check_classify(ans)
    assert ans["music"]["verdict"] == "mixed", ans["music"]
    assert not any(s["music"] for s in ans["segments"][:11])
    # Genres count the music chunks only: the song's own answer.
    assert ans["top"] == classify(backbone_daemon, audio.excerpt_flac, "?trim=0")["top"]


def test_model_description(backbone_daemon, api):
    r = backbone_daemon.request("GET", "/v1/model")
    assert r.status_code == 200
    d = r.json()
    api.validate(d, "ModelDescription")
    assert "MIT License" in d["license"] and "Florian Schmid" in d["license"]
    assert d["features"]["mel_scale"] == "kaldi" and d["features"]["sample_rate"] == 32000
    assert d["outputs"]["embedding"] == "embedding"
    assert abs(d["mflops_per_chunk"] - 68.9) < 1.0
    assert 950_000 < d["parameters"] < 1_050_000   # 0.99 M, plus the genre head


def test_the_bundled_cnn_has_none_of_it(daemon, audio):
    ans = classify(daemon, audio.excerpt_flac, "?embedding=1")
    for key in ("music", "tags", "embedding"):
        assert key not in ans
    assert isinstance(ans["top"], str)


def readme_sounds_like_blocks(source_dir):
    """The sh and python blocks of the README's "Sounds like" section."""
    import re
    text = (source_dir / "README.md").read_text()
    m = re.search(r"^### Sounds like.*?\n(.*?)(?=^## |^### )", text, flags=re.M | re.S)
    assert m, "README.md has no 'Sounds like' section"
    blocks = dict(re.findall(r"^```(\w+)\n(.*?)^```$", m.group(1), flags=re.M | re.S))
    assert set(blocks) == {"sh", "python"}, sorted(blocks)
    return blocks


def test_readme_sounds_like_search(genred_bin, source_dir, backbone_model, gtzan_dir, tmp_path):
    """The README's recipe, as written but for the paths: a folder of 12
    excerpts of three genres into library.jsonl with embeddings, then its
    nearest-neighbour script for each song. Most songs' nearest neighbour
    must share their genre (chance: 3 of 11)."""
    blocks = readme_sounds_like_blocks(source_dir)
    music = tmp_path / "Music"
    for genre in ("classical", "metal", "reggae"):
        (music / genre).mkdir(parents=True)
        for f in sorted((gtzan_dir / genre).glob("*.flac"))[:4]:
            shutil.copyfile(f, music / genre / f.name)
    sh = (blocks["sh"].replace("build/genred", str(genred_bin))
          .replace("~/Music", str(music)).replace("conf/genred.conf", str(source_dir / "conf" / "genred.conf"))
          .replace("models/efficientat-mn04-genres.gmodel", str(backbone_model))
          .replace("library.jsonl", str(tmp_path / "library.jsonl")))
    r = subprocess.run(["bash", "-c", sh], cwd=source_dir, capture_output=True, text=True,
                       timeout=300, env=GENRED_ENV)
    assert r.returncode == 0, r.stderr
    (tmp_path / "nearest.py").write_text(blocks["python"])
    songs = sorted(music.glob("*/*.flac"))
    same = 0
    for song in songs:
        r = subprocess.run([sys.executable, str(tmp_path / "nearest.py"),
                            str(tmp_path / "library.jsonl"), str(song)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert len(lines) == 5, lines
        scores = [float(line.split()[0]) for line in lines]
        assert scores == sorted(scores, reverse=True) and all(-1 <= x <= 1 for x in scores)
        same += pathlib.Path(lines[0].split(None, 1)[1]).parent.name == song.parent.name
    assert same >= 9, f"{same} of {len(songs)} songs' nearest neighbour shares their genre"
