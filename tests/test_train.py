"""test_train.py - the training pipeline's pieces (train/), fast.

A dataset with an arbitrary set of genre folders (names such as "Rap" and
"brazilian-funk", not GTZAN's) is generated at test time with NumPy: each
genre a recognisable sound (tones at genre-specific pitches, clicks, noise),
short WAV files written in a temporary folder. On it:
  * discovery: genres from folder names, labels, unlisted.txt, refusals;
  * splits and folds are by track, never by chunk; the lists win when given;
  * `genred features` as training uses it: the cache, --chunk-hop's
    overlapping chunks equal the back-to-back ones where they coincide, the
    waveform envelope equals a NumPy reference of the same samples, audio
    variants (an MP3 round trip) go through ffmpeg then genred;
  * the feature cache is keyed on the genred binary too: another binary
    (a changed mel.c) computes the features again;
  * a short training run of a log-mel CNN and of the waveform autoencoder
    (design d), each exported and run by the C engine (infer_npy) within
    1e-4 of PyTorch, and by `genred classify`, which must name a genre of
    the dataset;
  * training learns: on held-out tracks of the synthetic genres, both
    designs score far above chance (1/3), in PyTorch and through `genred
    classify` of the exported model, which names each file's own genre
    folder (so labels shuffled anywhere between folders and the exported
    genre list would fail it).
Needs GENRED_BIN and GENRED_TOOL_INFER (`meson test` sets both) and ffmpeg.
"""
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import wave

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "train"))
import dataset  # noqa: E402
import gmodel  # noqa: E402
import train  # noqa: E402

RATE = 16000
GENRES = ["Rap", "brazilian-funk", "zydeco"]   # sorted as discover() sorts
TRACK_S = 7.0                                   # 2 back-to-back 3 s chunks, 5 at 1 s hops
TRAIN_DIR = pathlib.Path(__file__).resolve().parent.parent / "train"


@pytest.fixture(scope="module")
def genred(genred_bin):
    return str(genred_bin)


def sound(genre_index, track_index, seconds=TRACK_S):
    """A few seconds that a tiny model can tell apart by genre: genre 0 low
    tones, genre 1 clicks at a tempo, genre 2 band noise; tracks of a genre
    differ in detail (pitch, tempo, seed)."""
    rng = np.random.default_rng(100 * genre_index + track_index)
    t = np.arange(int(seconds * RATE)) / RATE
    if genre_index % 3 == 0:
        f = 110 * (1 + 0.1 * track_index)
        x = 0.3 * np.sin(2 * np.pi * f * t) + 0.2 * np.sin(2 * np.pi * 2.5 * f * t)
    elif genre_index % 3 == 1:
        x = np.zeros_like(t)
        period = int(RATE * (0.4 + 0.05 * track_index))
        for s in range(0, len(t), period):
            x[s:s + 200] = rng.uniform(-0.8, 0.8, len(x[s:s + 200]))
    else:
        x = np.convolve(rng.normal(0, 0.3, len(t)), np.ones(4) / 4, mode="same")
    return x + rng.normal(0, 0.01, len(t))


def write_wav(path, x):
    pcm = (np.clip(x, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.tobytes())
    return pcm.astype(np.float64) / 32768.0


def make_dataset(root, per_genre=4, genres=GENRES):
    for g, name in enumerate(genres):
        (root / name).mkdir(parents=True)
        for i in range(per_genre):
            write_wav(root / name / f"{name}.{i:02d}.wav", sound(g, i))
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("genres"))


# ---- discovery, splits, folds --------------------------------------------

def test_discover_any_genres(tmp_path):
    root = make_dataset(tmp_path / "d", per_genre=2)
    (root / ".hidden").mkdir()
    (root / "empty").mkdir()                 # no audio: not a genre
    (root / "Rap" / "notes.txt").write_text("not audio")
    genres, tracks = dataset.discover(str(root))
    assert genres == GENRES
    assert len(tracks) == 6
    assert {(t.genre, t.label) for t in tracks} == {(g, i) for i, g in enumerate(GENRES)}
    (root / "unlisted.txt").write_text("Rap.00\n")
    genres, tracks = dataset.discover(str(root))
    assert "Rap.00" not in {t.id for t in tracks} and len(tracks) == 5


def test_discover_refusals(tmp_path):
    one = make_dataset(tmp_path / "one", per_genre=1, genres=["solo"])
    with pytest.raises(SystemExit, match="at least two"):
        dataset.discover(str(one))
    dup = make_dataset(tmp_path / "dup", per_genre=1, genres=["a", "b"])
    (dup / "b" / "a.00.wav").write_bytes((dup / "a" / "a.00.wav").read_bytes())
    with pytest.raises(SystemExit, match="both"):
        dataset.discover(str(dup))


def test_split_by_track_seeded(tmp_path):
    root = make_dataset(tmp_path / "d", per_genre=5)
    _, tracks = dataset.discover(str(root))
    tr, va = dataset.split(str(root), tracks, valid_share=0.4, seed=7)
    assert not {t.id for t in tr} & {t.id for t in va}
    assert len(tr) + len(va) == len(tracks)
    for g in GENRES:                          # every genre on both sides
        assert sum(t.genre == g for t in va) == 2 and sum(t.genre == g for t in tr) == 3
    tr2, va2 = dataset.split(str(root), tracks, valid_share=0.4, seed=7)
    assert [t.id for t in va2] == [t.id for t in va]


def test_split_lists_win(tmp_path):
    root = make_dataset(tmp_path / "d", per_genre=3)
    (root / "train.txt").write_text("Rap.00\nzydeco.01\n")
    (root / "valid.txt").write_text("brazilian-funk.02\n")
    _, tracks = dataset.discover(str(root))
    tr, va = dataset.split(str(root), tracks)
    assert [t.id for t in tr] == ["Rap.00", "zydeco.01"]
    assert [t.id for t in va] == ["brazilian-funk.02"]
    (root / "valid.txt").write_text("Rap.00\n")
    with pytest.raises(SystemExit, match="both"):
        dataset.split(str(root), tracks)


def test_folds_partition_by_track(tmp_path):
    root = make_dataset(tmp_path / "d", per_genre=7)
    _, tracks = dataset.discover(str(root))
    parts = dataset.folds(tracks, k=5, seed=3)
    ids = [t.id for p in parts for t in p]
    assert sorted(ids) == sorted(t.id for t in tracks)      # each track exactly once
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    for p in parts:                                          # stratified
        counts = [sum(t.label == g for t in p) for g in range(3)]
        assert max(counts) - min(counts) <= 1, counts
    assert [t.id for t in dataset.folds(tracks, 5, seed=3)[0]] == [t.id for t in parts[0]]


# ---- features through genred ---------------------------------------------

def test_extract_chunks_cache_and_owners(genred, data, tmp_path):
    genres, tracks = dataset.discover(str(data))
    params = str(TRAIN_DIR / "features.json")
    cache = tmp_path / "cache"
    paths = dataset.extract(genred, params, tracks, str(cache))
    hop = dataset.extract(genred, params, tracks, str(cache), chunk_hop=1.0)
    a, b = np.load(paths[tracks[0].id]), np.load(hop[tracks[0].id])
    assert a.shape == (2, 128, 128) and b.shape == (5, 128, 128)
    # Chunk 3 of the 1 s hops starts at 3 s: it is back-to-back chunk 1, and
    # chunk 0 is chunk 0 (up to FFTW's plan-dependent rounding).
    assert float(np.abs(b[3] - a[1]).max()) < 2e-3
    assert float(np.abs(b[0] - a[0]).max()) < 2e-3
    assert float(np.abs(b[1] - a[0]).max()) > 1.0       # really another window

    # Cached: a second call runs nothing and returns the same files.
    stamp = {p: os.path.getmtime(p) for p in paths.values()}
    again = dataset.extract(genred, params, tracks, str(cache))
    assert again == paths and all(os.path.getmtime(p) == stamp[p] for p in paths.values())

    # Chunks are stacked by track: owners tell tracks apart, labels follow.
    train_t = tracks[::2]
    X, y, owner = dataset.load_chunks(train_t, paths)
    assert X.shape == (2 * len(train_t), 1, 128, 128)
    assert list(owner) == [i for i in range(len(train_t)) for _ in range(2)]
    assert list(y) == [t.label for t in train_t for _ in range(2)]


def test_cache_is_keyed_on_the_binary(genred, data, tmp_path):
    """Features computed by another genred binary (after a change to mel.c,
    say) live elsewhere: retraining never reuses stale ones."""
    _, tracks = dataset.discover(str(data))
    params = str(TRAIN_DIR / "features.json")
    other = tmp_path / "genred-copy"
    other.write_bytes(pathlib.Path(genred).read_bytes() + b"\0")  # another build's bytes
    other.chmod(0o755)
    a = dataset.extract(genred, params, tracks[:1], str(tmp_path / "cache"))
    b = dataset.extract(str(other), params, tracks[:1], str(tmp_path / "cache"))
    assert a[tracks[0].id] != b[tracks[0].id]
    assert os.path.exists(a[tracks[0].id]) and os.path.exists(b[tracks[0].id])
    assert dataset.features_key(genred, params) == dataset.features_key(genred, params)
    assert dataset.features_key(genred, params) != dataset.features_key(
        genred, str(TRAIN_DIR / "features-waveform.json"))


def test_chunk_hop_refusals(genred, data, tmp_path):
    wav = next((data / "Rap").iterdir())
    params = str(TRAIN_DIR / "features.json")
    for bad in ("0", "-1", "x", "1e9"):
        r = subprocess.run([genred, "features", "--params", params, "--chunk-hop", bad,
                            str(wav), "-o", str(tmp_path / "o.npy")], capture_output=True, text=True,
                           env=dataset.genred_env())
        assert r.returncode == 2 and "chunk-hop" in r.stderr, (bad, r.stderr)
    r = subprocess.run([genred, "features", "--params", params, "--chunk-hop", "3.5",
                        str(wav), "-o", str(tmp_path / "o.npy")], capture_output=True, text=True,
                       env=dataset.genred_env())
    assert r.returncode == 1 and "chunk hop" in r.stderr, r.stderr


def test_waveform_features_are_the_envelope(genred, tmp_path):
    x = write_wav(tmp_path / "w.wav", sound(1, 2, seconds=6.5))
    params = json.loads((TRAIN_DIR / "features-waveform.json").read_text())
    params.update(norm_mean=0.05, norm_std=0.5)
    (tmp_path / "p.json").write_text(json.dumps(params))
    for hop, starts in ((None, [0, 48000]), (1.0, [0, 16000, 32000, 48000])):
        cmd = [genred, "features", "--params", str(tmp_path / "p.json"), "--trim", "0",
               str(tmp_path / "w.wav"), "-o", str(tmp_path / "w.npy")]
        if hop:
            cmd += ["--chunk-hop", str(hop)]
        subprocess.run(cmd, check=True, capture_output=True, env=dataset.genred_env())
        got = np.load(tmp_path / "w.npy")
        want = np.stack([np.abs(x[s:s + 48000]).reshape(500, 96).mean(1) for s in starts])
        assert got.shape == (len(starts), 500)
        np.testing.assert_allclose(got, (want - 0.05) / 0.5, atol=1e-5)


def test_mp3_variant(genred, data, tmp_path):
    _, tracks = dataset.discover(str(data))
    params = str(TRAIN_DIR / "features.json")
    orig = dataset.extract(genred, params, tracks[:2], str(tmp_path))
    mp3 = dataset.extract(genred, params, tracks[:2], str(tmp_path), variant="mp3")
    assert set(mp3.values()).isdisjoint(orig.values())
    for t in tracks[:2]:
        a, b = np.load(orig[t.id]), np.load(mp3[t.id])
        assert a.shape == b.shape
        assert 0 < float(np.abs(a - b).mean()) < 10.0       # near, not equal (dB units)
    with pytest.raises(ValueError, match="variant"):
        dataset.extract(genred, params, tracks[:1], str(tmp_path), variant="chorus")


# ---- train, export, run in C ----------------------------------------------

def run_infer(tool, x, model_path, tmp_path):
    np.save(tmp_path / "in.npy", x.astype("<f4"))
    r = subprocess.run([tool, str(model_path), str(tmp_path / "in.npy"),
                        str(tmp_path / "out.npy"), "3"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return np.load(tmp_path / "out.npy")


@pytest.mark.parametrize("arch", ["e", "d"])
def test_train_export_parity(arch, genred, infer_tool, data, tmp_path):
    ctx = train.Context(data=str(data), genred=genred, cache=str(tmp_path / "cache"), jobs=2)
    genres, tracks = dataset.discover(str(data))
    tr, va = dataset.split(str(data), tracks, valid_share=0.25)
    recipe = train.Recipe(arch=arch, epochs=2, epoch_chunks=64, batch=16,
                          variants=("orig",), threads=2)
    model, mean, std, ev, _ = train.train_and_evaluate(ctx, recipe, genres, tr, va,
                                                       log=lambda s: None)
    assert ev["votes"]["items"] == len(va) and ev["chunk"]["items"] == 2 * len(va)
    path = tmp_path / "m.gmodel"
    header = train.export(path, model, genres, recipe, mean, std, {"dataset": "test"}, "t", "0")
    assert header["genres"] == genres
    assert header["features"]["kind"] == ("waveform" if arch == "d" else "logmel")
    assert header["features"]["norm_std"] == pytest.approx(std)

    X, _, _ = train.eval_chunks(ctx, recipe.kind(), va)
    want = train.predict(model, X, mean, std)
    # The C engine normalises in its feature code: feed it raw features
    # normalised the way the file says, as the daemon would have computed.
    got = run_infer(infer_tool, (X - mean) / std, path, tmp_path)
    assert got.shape == want.shape
    assert float(np.abs(got - want).max()) <= 1e-4

    # The daemon path end to end: genred classify with the exported model.
    wav = va[0].path
    r = subprocess.run([genred, "classify", "--model", str(path), "--trim", "0", wav],
                       capture_output=True, text=True, timeout=120, env=dataset.genred_env())
    assert r.returncode == 0, r.stderr
    answer = json.loads(r.stdout)
    assert answer["top"] in genres and answer["chunks"] == 2
    # Same features, same model: the daemon's mean probabilities are
    # PyTorch's within the parity tolerance.
    first = want[:2].mean(0)
    probs = {g["genre"]: g["probability"] for g in answer["genres"]}
    assert max(abs(probs[g] - first[i]) for i, g in enumerate(genres)) <= 1e-4


@pytest.mark.parametrize("arch", ["e", "d"])
def test_training_learns(arch, genred, tmp_path):
    """Six tracks per genre, two of each held out: the trained model must
    get at least 5 of the 6 held-out tracks right (chance: 2), in PyTorch's
    evaluation and through the daemon's path on the files themselves."""
    data = make_dataset(tmp_path / "genres", per_genre=6)
    ctx = train.Context(data=str(data), genred=genred, cache=str(tmp_path / "cache"), jobs=2)
    genres, tracks = dataset.discover(str(data))
    tr, va = dataset.split(str(data), tracks, valid_share=0.34, seed=5)
    assert sorted(t.genre for t in va) == sorted(GENRES * 2)
    recipe = train.Recipe(arch=arch, epochs=6, epoch_chunks=128, batch=16,
                          variants=("orig",), threads=2)
    if arch == "d":
        recipe = dataclasses.replace(train.dsae_recipe(recipe), epochs=30)
    model, mean, std, ev, _ = train.train_and_evaluate(ctx, recipe, genres, tr, va,
                                                       log=lambda s: None)
    assert ev["votes"]["items"] == 6
    assert ev["votes"]["accuracy"] >= 5 / 6, ev["votes"]
    assert ev["chunk"]["accuracy"] >= 0.75, ev["chunk"]

    path = tmp_path / "m.gmodel"
    train.export(path, model, genres, recipe, mean, std, {"dataset": "test"}, "t", "0")
    r = subprocess.run([genred, "classify", "--model", str(path), *[t.path for t in va]],
                       capture_output=True, text=True, timeout=300, env=dataset.genred_env())
    assert r.returncode == 0, r.stderr
    answers = [json.loads(line) for line in r.stdout.splitlines()]
    right = [a["top"] == pathlib.Path(a["file"]).parent.name for a in answers]
    assert len(answers) == 6 and sum(right) >= 5, [(a["file"], a["top"]) for a in answers]


def test_pipeline_smoke(genred, data, tmp_path):
    """train/pipeline.py end to end on the generated genres with a tiny
    budget, without a teacher (the backbone knows none of these genres;
    tests/test_distill.py runs it with one): both models written and loadable, the card and its PNG made
    from the results, every section filled."""
    out = tmp_path / "out"
    cmd = [sys.executable, str(TRAIN_DIR / "pipeline.py"), "--data", str(data),
           "--genred", genred, "--cache", str(tmp_path / "cache"), "--teacher", "none",
           "--model", str(out / "m.gmodel"), "--dsae-model", str(out / "d.gmodel"),
           "--card", str(out / "card.md"), "--png", str(out / "card.png"),
           "--results", str(out / "results.json"), "--designs", str(out / "none.json"),
           "--cv", "2", "--epochs", "1", "--epoch-chunks", "32", "--batch", "16",
           "--valid-seeds", "2", "--dsae-epochs", "2", "--name", "tiny-cnn",
           "--command", "pytest"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["genres"] == GENRES
    assert res["cv"]["k"] == 2 and len(res["cv"]["folds"]) == 2
    assert res["cv"]["out_of_fold_votes"]["items"] == 12          # every track once
    # The daemon and PyTorch agree on every WAV: same features, same model.
    assert res["agreement"]["daemon"]["matches_pytorch"] == 1.0
    for name, kind in (("m.gmodel", "logmel"), ("d.gmodel", "waveform")):
        _, header = gmodel.load(out / name)
        assert header["features"]["kind"] == kind and header["genres"] == GENRES
    assert res["shipped"]["parameters"] > 0 and res["shipped"]["mflops_per_chunk"] > 0
    assert res["valid"]["seeds"] == [1234, 1235]
    assert len(res["valid"]["by_seed"]["track_accuracy_votes"]) == 2
    text = (out / "card.md").read_text()
    for section in ("## Accuracy on held-out tracks", "seeds 1234, 1235", "### Confusion matrices",
                    "## WAV versus MP3", "## Inference cost", "design d",
                    "## Training and reproduction", "## Limitations"):
        assert section in text, section
    assert "card.png" in text and (out / "card.png").read_bytes()[:4] == b"\x89PNG"
