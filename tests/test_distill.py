"""test_distill.py - the bundled CNN's teacher and its distillation
(train/teacher.py, train/augment.py, train/distill.py), on real GTZAN audio
from ../shared and the backbone checkpoint beside it:
  * the teacher's head applied in NumPy to genred's cached backbone values
    equals genred running the same head converted into the model file
    (genre_logits), so one backbone pass serves every head;
  * a calibrated head fitted on some tracks is at least as right as the
    zero-shot one on those tracks, and it is a head mn04.convert accepts;
  * the genre prior that logit adjustment (distill --adjust) takes off;
  * rendered sources: a mix is as long as its shorter track and differs
    from both; student chunks and teacher values align one to one; a run
    may use a mix only if it may learn from both of its tracks;
  * train/pipeline.py end to end with a teacher on a small GTZAN subset:
    the student is written, loads in PyTorch and C with the same output, and
    the card shows the teacher, its provenance and the comparison;
  * train/probe.py measures a student's agreement with its teacher, and its
    transductive mode hears valid.txt's audio without its labels.
Skips, with the reason, only when ../shared lacks the data or checkpoint.
Needs GENRED_BIN and GENRED_TOOL_INFER (`meson test` sets both) and ffmpeg.
"""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "train"))
import augment  # noqa: E402
import dataset  # noqa: E402
import gmodel  # noqa: E402
import gmodel_file  # noqa: E402
import mn04  # noqa: E402
import teacher as teachers  # noqa: E402


@pytest.fixture(scope="module")
def shared():
    s = pathlib.Path(os.environ.get("GENRED_SHARED", ROOT.parent / "shared"))
    ckpt = s / "models" / "efficientat-mn04" / mn04.CHECKPOINT["file"]
    data = s / "data" / "gtzan16k"
    if not ckpt.is_file() or not data.is_dir():
        pytest.skip(f"{ckpt} or {data} is missing: distillation needs ../shared")
    return ckpt, data


@pytest.fixture(scope="module")
def small(shared, tmp_path_factory):
    """2 tracks per GTZAN genre (1 to train, 1 to validate), linked into a
    dataset folder with train.txt / valid.txt (small: the ASan build runs
    the backbone too)."""
    _, data = shared
    root = tmp_path_factory.mktemp("gtzan-small")
    train_ids, valid_ids = [], []
    for g in mn04.GENRES:
        (root / g).mkdir()
        files = sorted((data / g).glob("*.flac"))[:2]
        for i, f in enumerate(files):
            (root / g / f.name).symlink_to(f)
            (train_ids if i < 1 else valid_ids).append(f.stem)
    (root / "train.txt").write_text("\n".join(train_ids) + "\n")
    (root / "valid.txt").write_text("\n".join(valid_ids) + "\n")
    return root


@pytest.fixture(scope="module")
def teacher(shared, genred_bin, tmp_path_factory):
    ckpt, _ = shared
    return teachers.Teacher(str(genred_bin), str(ckpt),
                            str(tmp_path_factory.mktemp("cache")))


def test_head_in_numpy_is_genred_s(teacher, small, tmp_path):
    genres, tracks = dataset.discover(str(small))
    values = teacher.track_values(tracks)
    head = teachers.fit_calibrated(values, tracks, genres)
    zs = teachers.zero_shot_head()
    # Calibration is fitted on these tracks: it must not be worse on them.
    def right(h):
        return sum(int(teachers.apply_head(h, values[t.id]).mean(0).argmax() == t.label)
                   for t in tracks)
    assert right(head) >= right(zs)
    header, data = mn04.convert(mn04.read_checkpoint(teacher.checkpoint), head)
    path = tmp_path / "calibrated.gmodel"
    gmodel_file.write(str(path), header, data)
    t = tracks[0]
    out = tmp_path / "v.npy"
    r = subprocess.run([teacher.genred, "features", "--model", str(path), "--values",
                        "genre_logits", t.path, "-o", str(out)], capture_output=True, text=True,
                       env=dataset.genred_env())
    assert r.returncode == 0, r.stderr
    got = np.load(out)
    want = teachers.apply_head(head, values[t.id])
    assert got.shape == want.shape == (len(values[t.id]), 10)
    assert float(np.abs(got - want).max()) <= 1e-3
    assert not np.allclose(want, teachers.apply_head(zs, values[t.id]))


def test_sources_render_and_align(teacher, small):
    genres, tracks = dataset.discover(str(small))
    by_id = {t.id: t for t in tracks}
    a, b = tracks[0], tracks[-1]
    mix = {"kind": "mix", "a": a.id, "b": b.id, "weight": 0.5, "offset": 2.0,
           "fx": [["gain", -3.0], ["eq", 3.0, -3.0, 800, 2.0], ["mp3", 128]]}
    fx = {"kind": "track", "track": a.id, "fx": [["tempo", 1.1]]}
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        m = augment.decode(augment.render(mix, by_id, tmp))
        xa, xb = augment.decode(a.path), augment.decode(b.path)
        n = min(len(xa), len(xb))
        assert abs(len(m) - n) < 0.1 * augment.SR       # the MP3 pads a few frames
        k = min(len(m), n)
        for x in (xa[:k], np.roll(xb[:n], 2 * augment.SR)[:k]):
            assert np.corrcoef(m[:k], x)[0, 1] < 0.95
    with tempfile.TemporaryDirectory() as tmp:
        faster = augment.decode(augment.render(fx, by_id, tmp))
        assert abs(len(faster) - len(xa) / 1.1) < 0.05 * augment.SR
    cache = os.path.dirname(os.path.dirname(teacher.model))
    params = str(ROOT / "train" / "features.json")
    out, fresh = augment.extract([mix, fx], by_id, teacher.genred, params, teacher, cache, 1.0)
    assert fresh == 2
    for x, t in out:
        assert x.shape[1:] == (128, 128) and t.shape[1] == 911 and len(x) == len(t) > 20
    # Cached: a second call renders nothing and returns the same arrays.
    again, fresh = augment.extract([mix, fx], by_id, teacher.genred, params, teacher, cache, 1.0)
    assert fresh == 0
    assert all(np.array_equal(p[0], q[0]) for p, q in zip(out, again))
    assert augment.usable(mix, {a.id, b.id}) and not augment.usable(mix, {a.id})
    assert augment.usable(fx, {a.id}) and not augment.usable(fx, {b.id})


def test_plan_is_seeded_and_mixes_two_genres(small):
    _, tracks = dataset.discover(str(small))
    p1, p2 = augment.plan(tracks, 1, 12, 7), augment.plan(tracks, 1, 12, 7)
    assert p1 == p2 and p1 != augment.plan(tracks, 1, 12, 8)
    labels = {t.id: t.label for t in tracks}
    mixes = [s for s in p1 if s["kind"] == "mix"]
    assert len(mixes) == 12 and all(labels[s["a"]] != labels[s["b"]] for s in mixes)
    assert sum(s["kind"] == "track" for s in p1) == 3 * len(tracks)


def test_target_prior_for_logit_adjustment():
    """distill.Pool.target_prior: the training target averaged over the
    draw probabilities, the true label mixed in at alpha where there is one."""
    import types
    import distill
    pool = types.SimpleNamespace(logits=np.log(np.array([[1.0, 1.0], [3.0, 1.0], [1.0, 3.0]])),
                                 y=np.array([0, -1, 1]))
    w = np.array([0.5, 0.25, 0.25])
    prior = distill.Pool.target_prior(pool, w, 0.5)
    # row 0: 0.5 x (0.5, 0.5) + 0.5 x (1, 0); row 1: (0.75, 0.25); row 2: 0.5 x (0.25, 0.75) + 0.5 x (0, 1)
    want = 0.5 * np.array([0.75, 0.25]) + 0.25 * np.array([0.75, 0.25]) + 0.25 * np.array([0.125, 0.875])
    np.testing.assert_allclose(prior, want / want.sum())
    assert distill.Recipe().adjust == 0.0


def test_pipeline_distills(shared, genred_bin, small, tmp_path):
    """train/pipeline.py with the teacher, a tiny budget: the student file is
    written and agrees with PyTorch in C, the valid.txt teacher is the
    calibrated head fitted on train.txt alone, the card compares."""
    ckpt, _ = shared
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "train" / "pipeline.py"), "--data", str(small),
           "--genred", str(genred_bin), "--cache", str(tmp_path / "cache"),
           "--teacher", str(ckpt),
           "--model", str(out / "m.gmodel"), "--dsae-model", str(out / "d.gmodel"),
           "--card", str(out / "card.md"), "--png", str(out / "card.png"),
           "--results", str(out / "results.json"), "--designs", str(out / "none.json"),
           "--cv", "2", "--epochs", "1", "--epoch-chunks", "32", "--batch", "16",
           "--n-fx", "0", "--n-mixes", "6", "--valid-seeds", "1", "--dsae-epochs", "2",
           "--sizes", "e_s,e",
           "--name", "tiny-student", "--version", "9.9.9", "--command", "pytest"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    t = res["teacher"]
    assert t["sha256"] == mn04.CHECKPOINT["sha256"] and "calibrated" in t["valid_head"]
    assert t["valid"]["votes"]["items"] == 10 and t["cv"]["out_of_fold_votes"]["items"] == 20
    assert t["valid_pool"]["sources"]["track"] == 10
    # Only mixes of two train.txt tracks: 6 drawn among 20 tracks, fewer usable.
    assert t["valid_pool"]["sources"]["mix"] <= 6
    assert res["agreement"]["daemon"]["matches_pytorch"] == 1.0
    sizes = {z["arch"]: z for z in t["sizes"]}
    assert sizes["e"]["shipped"] and not sizes["e_s"]["shipped"]
    assert sizes["e_s"]["mflops_per_chunk"] < sizes["e"]["mflops_per_chunk"]
    model, header = gmodel.load(out / "m.gmodel")
    assert header["version"] == "9.9.9" and header["genres"] == mn04.GENRES
    assert header["training"]["teacher"]["sha256"] == mn04.CHECKPOINT["sha256"]
    text = (out / "card.md").read_text()
    for section in ("## The teacher", "## Student, teacher and the earlier models",
                    "### Student size against accuracy",
                    "mn04_as_mAP_432.pt", "MIT", "(this student)"):
        assert section in text, section


def test_probe_measures_agreement(shared, genred_bin, small, tmp_path):
    """train/probe.py on a tiny budget (one run with distill.py's default --aux): the
    design sizes it reports are the documented ones, its numbers are
    fractions, and --transductive learns from valid.txt's audio too, with
    alpha and balance 0 (no label of it)."""
    ckpt, _ = shared
    out = tmp_path / "probe.jsonl"
    base = [sys.executable, str(ROOT / "train" / "probe.py"), "--data", str(small),
            "--genred", str(genred_bin), "--cache", str(tmp_path / "cache"),
            "--checkpoint", str(ckpt), "--json", str(out), "--epochs", "1",
            "--epoch-chunks", "32", "--batch", "16", "--n-fx", "0", "--n-mixes", "4"]
    for extra in ([], ["--transductive", "--variant", "depthwise", "--aux", ""]):
        r = subprocess.run(base + extra, capture_output=True, text=True, timeout=1200)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    plain, trans = [json.loads(line) for line in out.read_text().splitlines()]
    assert plain["multiply_adds"] == 17_106_176 and trans["multiply_adds"] == 28_109_312
    assert not plain["transductive"] and trans["transductive"]
    assert plain["recipe"]["aux"] == "embedding,audioset_logits"
    assert trans["recipe"]["aux"] == ""
    assert trans["recipe"]["alpha"] == 0.0 and trans["recipe"]["balance"] == 0.0
    # 10 train.txt and 10 valid.txt tracks, each as it is and as an MP3.
    assert trans["chunks"] > plain["chunks"] * 1.5
    for res in (plain, trans):
        for part in ("train", "valid"):
            for v in res[part].values():
                assert 0.0 <= v <= 1.0
        assert res["teacher_valid"]["track_accuracy_votes"] >= 0.5
