"""test_clients.py - the client side as the README shows it.

The code blocks of the README's "Clients" section run as they are written,
with only the address, the song and the folder replaced: curl, Python
(requests), JavaScript (Node's fetch) against a live daemon, and the batch
recipe scripts/classify-folder. Each must print the answer the daemon gives
for the same file.

scripts/classify-folder is also checked on its own: every audio file under a
folder (nested, spaces and newlines in names, upper-case extensions) gets
exactly one JSON line on stdout, a broken file an error line and exit status
1, other files are ignored; progress goes to stderr only when stderr is a
terminal (a pseudo-terminal here), never to stdout; with --output a second
run adds nothing.

What it does not do: test the API itself (test_api.py).
"""
import json
import os
import pty
import re
import shutil
import subprocess

import pytest

RUN_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def readme_blocks(source_dir):
    """{language: [code, ...]} of the fenced blocks in README's Clients section."""
    text = (source_dir / "README.md").read_text()
    m = re.search(r"^## Clients\n(.*?)(?=^## )", text, flags=re.M | re.S)
    assert m, "README.md has no '## Clients' section"
    blocks = {}
    for lang, code in re.findall(r"^```(\w+)\n(.*?)^```$", m.group(1), flags=re.M | re.S):
        blocks.setdefault(lang, []).append(code)
    assert set(blocks) >= {"sh", "python", "js"}, sorted(blocks)
    return blocks


def run(argv, cwd=None, env=None, timeout=RUN_TIMEOUT_S, **kw):
    base = {k: v for k, v in os.environ.items() if not k.startswith("GENRED_")}
    # Examples reach the daemon directly, as on a developer's machine.
    for proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                  "all_proxy"):
        base.pop(proxy, None)
    base.update(env or {})
    return subprocess.run([str(a) for a in argv], cwd=cwd, env=base, capture_output=True,
                          timeout=timeout, **kw)


@pytest.fixture(scope="module")
def song(audio, tmp_path_factory):
    """The excerpt MP3 under the name the examples use."""
    path = tmp_path_factory.mktemp("client") / "song.mp3"
    shutil.copyfile(audio.excerpt_mp3, path)
    return path


@pytest.fixture(scope="module")
def expected(daemon, song):
    r = daemon.request("POST", "/v1/classify", data=song.read_bytes(),
                       headers={"Content-Type": "audio/mpeg"})
    assert r.status_code == 200, r.text
    ans = r.json()
    return ans["top"], [(g["genre"], g["percent"]) for g in ans["top3"]]


def localise(code, daemon, song):
    assert "http://127.0.0.1:8080" in code and "song.mp3" in code, code
    return code.replace("http://127.0.0.1:8080", daemon.url).replace("song.mp3", str(song))


def test_readme_curl(readme_blocks, daemon, song, expected):
    (code,) = [c for c in readme_blocks["sh"] if c.lstrip().startswith("curl")]
    r = run(["bash", "-euo", "pipefail", "-c", localise(code, daemon, song)])
    assert r.returncode == 0, r.stderr
    ans = json.loads(r.stdout)
    assert (ans["top"], [(g["genre"], g["percent"]) for g in ans["top3"]]) == expected


def test_readme_python(readme_blocks, daemon, song, expected, tmp_path):
    (code,) = readme_blocks["python"]
    script = tmp_path / "client.py"
    script.write_text(localise(code, daemon, song))
    r = run(["/usr/bin/python3", script], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().strip() == f"{expected[0]} {expected[1]}"


def test_readme_javascript(readme_blocks, daemon, song, expected, tmp_path):
    node = shutil.which("node") or shutil.which("nodejs")
    if not node:
        pytest.fail("node is not installed (.ci/install-deps test installs nodejs)", pytrace=False)
    (code,) = readme_blocks["js"]
    script = tmp_path / "client.mjs"
    script.write_text(localise(code, daemon, song))
    r = run([node, script], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    top, _, rest = r.stdout.decode().strip().partition(" ")
    shares = [(g, float(p)) for g, p in re.findall(r"(\S+) ([0-9.]+)%", rest)]
    assert (top, shares) == expected, r.stdout


def test_readme_batch_recipe(readme_blocks, source_dir, genred_bin, audio, tmp_path):
    (code,) = [c for c in readme_blocks["sh"] if "classify-folder" in c]
    music = tmp_path / "Music"
    music.mkdir()
    shutil.copyfile(audio.excerpt_mp3, music / "one.mp3")
    shutil.copyfile(audio.excerpt_wav, music / "two.wav")
    out = tmp_path / "genres.jsonl"
    code = code.replace("build/genred", str(genred_bin)).replace("~/Music", str(music)) \
               .replace("genres.jsonl", str(out))
    r = run(["bash", "-euo", "pipefail", "-c", code], cwd=source_dir)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["file"] for x in lines] == [str(music / "one.mp3"), str(music / "two.wav")]
    assert all(x["chunks"] == 10 for x in lines), lines


# --- scripts/classify-folder on its own ------------------------------------

@pytest.fixture(scope="module")
def folder(audio, tmp_path_factory):
    """Audio under awkward names, a broken file and a non-audio file."""
    root = tmp_path_factory.mktemp("folder")
    (root / "a b" / "deep").mkdir(parents=True)
    (root / "Album").mkdir()
    files = {
        "a b/deep/with space.mp3": audio.excerpt_mp3,
        "UPPER.WAV": audio.excerpt_wav,
        "line\nbreak.flac": audio.excerpt_flac,
        "-dash.ogg": audio.excerpt_ogg,
        "Album/Song.M4A": audio.excerpt_m4a,
        "studio take.aiff": audio.excerpt_aiff,
    }
    for name, src in files.items():
        shutil.copyfile(src, root / name)
    (root / "broken.mp3").write_bytes(b"this is not audio at all\n" * 100)
    (root / "notes.txt").write_text("not an audio file name; must be skipped\n")
    return root, sorted(str(root / n) for n in files), str(root / "broken.mp3")


def classify_folder(source_dir, genred_bin, model_path, folder, stderr=subprocess.PIPE):
    script = source_dir / "scripts" / "classify-folder"
    return subprocess.run([str(script), str(folder), "--model", str(model_path), "--workers", "1"],
                          env={**{k: v for k, v in os.environ.items()
                                  if not k.startswith("GENRED_")}, "GENRED": str(genred_bin)},
                          stdout=subprocess.PIPE, stderr=stderr, timeout=RUN_TIMEOUT_S)


def test_classify_folder_one_line_per_file(source_dir, genred_bin, model_path, folder, api):
    root, good, broken = folder
    r = classify_folder(source_dir, genred_bin, model_path, root)
    assert r.returncode == 1, "a broken file must make the exit status 1"
    assert r.stderr == b"", f"progress or noise on a non-terminal stderr: {r.stderr[:500]!r}"
    lines = [json.loads(x) for x in r.stdout.decode().splitlines()]
    assert sorted(x["file"] for x in lines) == sorted(good + [broken])
    for x in lines:
        if x["file"] == broken:
            assert x["error"]["code"] == "unsupported_media", x
            continue
        ans = dict(x)
        del ans["file"]
        api.validate(ans, "ClassifyResult")
        assert ans["chunks"] == 10


def test_classify_folder_resumes_with_output(source_dir, genred_bin, model_path, folder,
                                             tmp_path):
    root, good, broken = folder
    out = tmp_path / "tags.jsonl"
    script = source_dir / "scripts" / "classify-folder"
    argv = [str(script), str(root), "--model", str(model_path), "--output", str(out)]
    e = {**{k: v for k, v in os.environ.items() if not k.startswith("GENRED_")},
         "GENRED": str(genred_bin)}
    r = subprocess.run(argv, env=e, capture_output=True, timeout=RUN_TIMEOUT_S)
    assert r.returncode == 1 and r.stdout == b"", r.stderr
    first = out.read_bytes()
    assert sorted(json.loads(x)["file"] for x in first.splitlines()) == sorted(good + [broken])
    r = subprocess.run(argv, env=e, capture_output=True, timeout=RUN_TIMEOUT_S)
    assert r.returncode == 0 and out.read_bytes() == first, r.stderr


def test_classify_folder_exit_0_when_all_classify(source_dir, genred_bin, model_path, audio,
                                                  tmp_path):
    shutil.copyfile(audio.excerpt_wav, tmp_path / "x.wav")
    r = classify_folder(source_dir, genred_bin, model_path, tmp_path)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 1


def test_classify_folder_progress_only_on_a_terminal(source_dir, genred_bin, model_path, folder):
    root, good, broken = folder
    master, slave = pty.openpty()
    try:
        r = classify_folder(source_dir, genred_bin, model_path, root, stderr=slave)
        os.close(slave)
        slave = None
        shown = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other side is closed
                break
            if not chunk:
                break
            shown += chunk
    finally:
        if slave is not None:
            os.close(slave)
        os.close(master)
    total = len(good) + 1
    assert f"] {total}/{total} files 100%".encode() in shown, shown[-300:]
    assert b"files/s" not in r.stdout
    assert len(r.stdout.decode().splitlines()) == total


def test_classify_folder_edge_cases(source_dir, genred_bin, model_path, tmp_path):
    r = classify_folder(source_dir, genred_bin, model_path, tmp_path)  # empty
    assert (r.returncode, r.stdout) == (0, b""), r
    assert b"no audio files" in r.stderr
    r = classify_folder(source_dir, genred_bin, model_path, tmp_path / "missing")
    assert r.returncode == 2 and b"is not a folder" in r.stderr
    script = source_dir / "scripts" / "classify-folder"
    r = subprocess.run([str(script)], capture_output=True, timeout=30)
    assert r.returncode == 2 and b"usage" not in r.stdout and b"classify-folder" in r.stderr
