"""test_catalogue.py - `genred classify` over many files (catalogue.h) and its
client-side twin scripts/classify-remote, on a handful of files each.

- Several songs at once give the lines one song at a time gives, in the
  list's order, each name once, a broken file an error line and exit 1.
- Resuming: a run killed in the middle and run again ends with every file
  exactly once; a last line cut short is done again; a line that is not
  genred's stops the run (exit 3) and changes nothing; a name that is not
  UTF-8 is written with U+FFFD and still skipped when resumed.
- Shards: N runs with --shard K/N over the same list in different orders do
  every file exactly once; when the list grows, each shard resumed does
  only the new files of its own.
- The list: NUL-separated or one per line, from a file or standard input.
- Options reach every file (--max-chunks, --segments, --trim); the progress
  line (bar, files, rate, ETA) appears only on a terminal.
- classify-remote against a daemon writes the same lines, picks the same
  shards, resumes the same way, retries 503 until every file is answered,
  and refuses a query option the daemon does not document.

Speed is bench/'s (docs/performance.md, "Catalogues"), not a test's.
"""
import json
import os
import pty
import shutil
import signal
import subprocess
import time

import pytest

RUN_TIMEOUT_S = 300


def env():
    return {k: v for k, v in os.environ.items() if not k.startswith("GENRED_")}


def classify(genred_bin, model_path, *args, stdin=None, stderr=subprocess.PIPE, timeout=RUN_TIMEOUT_S):
    return subprocess.run([str(genred_bin), "classify", "--model", str(model_path), "--workers", "2",
                           *map(str, args)], input=stdin, stdout=subprocess.PIPE, stderr=stderr,
                          env=env(), timeout=timeout)


def lines_of(data):
    text = data.decode() if isinstance(data, bytes) else data
    return [json.loads(x) for x in text.splitlines()]


def summary(line):
    """What must not depend on how many songs ran at once (probabilities
    may move in the last digits with the batches they shared)."""
    if "error" in line:
        return line["file"], line["error"]["code"]
    return line["file"], line["top"], line["chunks"], line["analyzed"], \
        [g["genre"] for g in line["genres"]]


@pytest.fixture(scope="module")
def library(audio, tmp_path_factory):
    """Eight files: four formats, copies under other names, one broken."""
    root = tmp_path_factory.mktemp("library")
    names = {"a.mp3": audio.excerpt_mp3, "b.wav": audio.excerpt_wav, "c.flac": audio.excerpt_flac,
             "d.ogg": audio.excerpt_ogg, "e.mp3": audio.excerpt_mp3, "f.wav": audio.excerpt_wav,
             "g.mp3": audio.song_mp3}
    for name, src in names.items():
        shutil.copyfile(src, root / name)
    (root / "broken.mp3").write_bytes(b"not audio at all\n" * 64)
    return [str(root / n) for n in sorted([*names, "broken.mp3"])]


def playable(library):
    return [f for f in library if not f.endswith("broken.mp3")]


def test_many_at_once_equals_one_at_a_time(genred_bin, model_path, library, api):
    listed = library + [library[2]]  # a repeat: done once, at its first place
    one = classify(genred_bin, model_path, "--jobs", 1, *listed)
    many = classify(genred_bin, model_path, "--jobs", 4, *listed)
    assert one.returncode == many.returncode == 1, (one.stderr, many.stderr)
    assert many.stderr == b"", many.stderr
    a, b = lines_of(one.stdout), lines_of(many.stdout)
    assert [x["file"] for x in b] == library, "not in the list's order, or not once each"
    assert [summary(x) for x in a] == [summary(x) for x in b]
    for x in b:
        if x["file"].endswith("broken.mp3"):
            assert x["error"]["code"] == "unsupported_media", x
            continue
        answer = {k: v for k, v in x.items() if k != "file"}
        api.validate(answer, "ClassifyResult")


def test_options_reach_every_file(genred_bin, model_path, library, audio):
    r = classify(genred_bin, model_path, "--max-chunks", 2, "--segments", 1, "--trim", 0,
                 *playable(library)[:3], audio.song_mp3)
    assert r.returncode == 0, r.stderr
    for x in lines_of(r.stdout):
        assert x["chunks"] == 2 and len(x["segments"]) == 2, x["file"]
        assert x["analyzed"]["trimmed"] is False


def test_resume_after_a_kill(genred_bin, model_path, audio, tmp_path):
    """Twenty 3-minute songs, one at a time; killed (SIGKILL) once two lines
    are written; run again: every file once, the first run's lines kept."""
    files = []
    for i in range(20):
        files.append(tmp_path / f"song{i:02d}.mp3")
        shutil.copyfile(audio.song_mp3, files[-1])
    out = tmp_path / "out.jsonl"
    argv = [str(genred_bin), "classify", "--model", str(model_path), "--jobs", "1",
            "--output", str(out), *map(str, files)]
    p = subprocess.Popen(argv, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and p.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= 2:
            break
        time.sleep(0.005)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    p.stderr.close()
    before = out.read_bytes()
    written = before.count(b"\n")
    assert 2 <= written < len(files), f"{written} lines when killed: not in the middle"
    r = subprocess.run(argv, env=env(), capture_output=True, timeout=RUN_TIMEOUT_S)
    assert r.returncode == 0, r.stderr
    after = out.read_bytes()
    assert after.startswith(before[:before.rfind(b"\n") + 1]), "the first run's lines changed"
    assert [x["file"] for x in lines_of(after)] == [str(f) for f in files]


def test_resume_redoes_a_line_cut_short(genred_bin, model_path, library, tmp_path):
    good = playable(library)[:4]
    out = tmp_path / "out.jsonl"
    r = classify(genred_bin, model_path, "--output", out, *good)
    assert r.returncode == 0 and r.stdout == b"", r.stderr
    whole = out.read_bytes()
    cut = whole[:whole.rfind(b"\n", 0, len(whole) - 1) + 1] + whole.splitlines()[-1][:40]
    out.write_bytes(cut)
    r = classify(genred_bin, model_path, "--output", out, *good)
    assert r.returncode == 0, r.stderr
    assert [x["file"] for x in lines_of(out.read_bytes())] == good
    # Nothing left to do: nothing written, exit 0.
    before = out.read_bytes()
    r = classify(genred_bin, model_path, "-o", out, *good)
    assert r.returncode == 0 and out.read_bytes() == before


def test_resume_refuses_a_foreign_line(genred_bin, model_path, library, tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text('{"file": "x.mp3", "top": "rock"}\nnot json\n')
    before = out.read_bytes()
    r = classify(genred_bin, model_path, "--output", out, *library[:2])
    assert r.returncode == 3, r
    assert f"{out}:2:".encode() in r.stderr, r.stderr
    assert out.read_bytes() == before


def test_name_that_is_not_utf8(genred_bin, model_path, audio, tmp_path):
    raw = os.fsencode(tmp_path) + b"/caf\xe9 \xf0\x9f.mp3"
    shutil.copyfile(audio.excerpt_mp3, raw)
    out = tmp_path / "out.jsonl"
    r = subprocess.run([os.fsencode(genred_bin), b"classify", b"--model",
                        os.fsencode(model_path), b"-o", os.fsencode(out), raw],
                       env=env(), capture_output=True, timeout=RUN_TIMEOUT_S)
    assert r.returncode == 0, r.stderr
    (x,) = lines_of(out.read_bytes())
    assert x["file"] == f"{tmp_path}/caf\ufffd \ufffd\ufffd.mp3" and x["chunks"] == 10
    r = subprocess.run([os.fsencode(genred_bin), b"classify", b"--model",
                        os.fsencode(model_path), b"-o", os.fsencode(out), raw],
                       env=env(), capture_output=True, timeout=RUN_TIMEOUT_S)
    assert r.returncode == 0 and len(lines_of(out.read_bytes())) == 1, "not skipped when resumed"


def test_shards_do_every_file_exactly_once(genred_bin, model_path, library, tmp_path):
    shards = 3
    outs = [tmp_path / f"shard-{k}.jsonl" for k in range(shards)]
    for k in range(shards):
        order = library[k:] + library[:k]  # the same list in another order
        listing = tmp_path / f"list{k}"
        listing.write_text("".join(f + "\n" for f in order))
        r = classify(genred_bin, model_path, "--files-from", listing, "--shard", f"{k}/{shards}",
                     "-o", outs[k])
        assert r.returncode in (0, 1), r.stderr
    done = [x["file"] for o in outs for x in lines_of(o.read_bytes())]
    assert sorted(done) == sorted(library), "some file done twice or never"
    assert sum(1 for o in outs if o.read_bytes()) >= 2, "one shard took everything"
    # The list grows: each shard resumed does only the new files of its own.
    extra = []
    for i in range(4):
        extra.append(str(tmp_path / f"new{i}.wav"))
        shutil.copyfile(library[1], extra[-1])
    grown = tmp_path / "grown"
    grown.write_bytes(b"".join(os.fsencode(f) + b"\0" for f in extra + library))
    before = [o.read_bytes() for o in outs]
    for k in range(shards):
        r = classify(genred_bin, model_path, "--files-from", grown, "--shard", f"{k}/{shards}",
                     "-o", outs[k])
        assert r.returncode == 0, r.stderr
    new = [x["file"] for o, b in zip(outs, before) for x in lines_of(o.read_bytes()[len(b):])]
    assert sorted(new) == sorted(extra)
    assert all(o.read_bytes().startswith(b) for o, b in zip(outs, before))


def test_list_from_stdin_and_usage(genred_bin, model_path, library):
    r = classify(genred_bin, model_path, "--files-from", "-",
                 stdin=b"".join(os.fsencode(f) + b"\0" for f in library[:2]))
    assert r.returncode == 0 and [x["file"] for x in lines_of(r.stdout)] == library[:2], r.stderr
    for bad in (["--shard", "3/3"], ["--shard", "1"], ["--shard", "-1/2"], ["--jobs", "0"]):
        r = classify(genred_bin, model_path, *bad, library[0])
        assert r.returncode == 2 and r.stdout == b"", (bad, r)
    r = classify(genred_bin, model_path, "--files-from", "/nonexistent/list")
    assert r.returncode == 3 and b"/nonexistent/list" in r.stderr


def read_terminal(master):
    shown = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the other side is closed
            return shown
        if not chunk:
            return shown
        shown += chunk


def test_progress_only_on_a_terminal(genred_bin, model_path, library):
    master, slave = pty.openpty()
    try:
        r = classify(genred_bin, model_path, *library, stderr=slave)
        os.close(slave)
        slave = None
        shown = read_terminal(master)
    finally:
        if slave is not None:
            os.close(slave)
        os.close(master)
    n = len(library)
    assert f"] {n}/{n} files 100%".encode() in shown, shown[-300:]
    assert b"files/s" in shown and b"took" in shown and b"1 error" in shown, shown[-300:]
    assert len(r.stdout.splitlines()) == n and b"files/s" not in r.stdout
    r = classify(genred_bin, model_path, *library)
    assert r.stderr == b""


# --- scripts/classify-remote -------------------------------------------------

def remote(source_dir, url, *args, stdin=None):
    return subprocess.run(["/usr/bin/python3", str(source_dir / "scripts" / "classify-remote"),
                           "--url", url, *map(str, args)], input=stdin, capture_output=True,
                          env=env(), timeout=RUN_TIMEOUT_S)


def test_remote_writes_what_genred_classify_writes(source_dir, daemon, genred_bin, model_path,
                                                   library, tmp_path):
    local = classify(genred_bin, model_path, "--max-chunks", 3, *library)
    out = tmp_path / "remote.jsonl"
    r = remote(source_dir, daemon.url, "--jobs", 3, "--max-chunks", 3, "-o", out, *library)
    assert r.returncode == 1, r.stderr  # the broken file
    got = lines_of(out.read_bytes())
    assert [summary(x) for x in got] == [summary(x) for x in lines_of(local.stdout)]
    # Resumed, with a last line cut short: only that file again.
    data = out.read_bytes()
    out.write_bytes(data[:-30])
    r = remote(source_dir, daemon.url, "--max-chunks", 3, "-o", out, *library)
    assert [x["file"] for x in lines_of(out.read_bytes())] == library, r.stderr
    # The same shards as genred classify's.
    for k in range(3):
        a = classify(genred_bin, model_path, "--shard", f"{k}/3", *library)
        b = remote(source_dir, daemon.url, "--shard", f"{k}/3", *library)
        assert [x["file"] for x in lines_of(a.stdout)] == [x["file"] for x in lines_of(b.stdout)]


def test_remote_refuses_an_unknown_query_option(source_dir, daemon, library):
    r = remote(source_dir, daemon.url, "--max-chunk", 3, library[0])
    assert r.returncode == 2 and b"max_chunk" in r.stderr and r.stdout == b"", r


def test_remote_retries_503_until_every_file_is_answered(source_dir, start_daemon, library,
                                                         audio, tmp_path):
    """One worker and a queue of one: most of 8 concurrent uploads get 503
    at first; each is retried after its Retry-After until answered."""
    d = start_daemon({"workers": 1, "queue-capacity": 1, "max-batch": 1})
    files = []
    for i in range(10):
        files.append(tmp_path / f"s{i:02d}.wav")
        shutil.copyfile(audio.excerpt_wav, files[-1])
    r = remote(source_dir, d.url, "--jobs", 8, *files)
    assert r.returncode == 0, r.stderr
    got = lines_of(r.stdout)
    assert [x["file"] for x in got] == [str(f) for f in files]
    assert all(x["chunks"] == 10 for x in got)
    text = d.request("GET", "/metrics").text
    busy = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith('genred_requests_total{route="/v1/classify",status="503"}'))
    assert busy >= 1, "no 503 at all: the retry path was not exercised"
    print(f"\n{int(busy)} answers of 503 retried")
