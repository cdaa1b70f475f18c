"""conftest.py - shared pytest fixtures for genred's Python tests.

Environment (set by `meson test`, see tests/meson.build):
  GENRED_BIN     the genred binary
  GENRED_SOURCE  the repository root (openapi.yaml, models/gtzan-cnn.gmodel)
  GENRED_SHARED  the shared folder holding data/gtzan16k
A missing variable, binary, model or data folder fails the test that needs it
with a message naming what is missing; nothing is skipped.

Fixtures:
  api            openapi.yaml loaded; validates objects against its schemas
  check_classify the invariants every classify answer must satisfy
  daemon         one `genred serve` for the whole session (stopped with
                 SIGTERM at the end; its exit status must be 0)
  start_daemon   starts more daemons with other flags, stopped at the end of
                 the test that started them
  audio          test audio made with the ffmpeg CLI from real GTZAN
                 excerpts, lazily, in a session temporary folder

What it does not do: assertions about particular answers (the test modules).
"""
import functools
import json
import math
import os
import pathlib
import queue
import re
import shutil
import signal
import subprocess
import threading
import time
import wave

import jsonschema
import pytest
import requests
import yaml

LISTEN_LINE = re.compile(r"^genred: listening on (https?://127\.0\.0\.1:(\d+))\s*$")
OPS_LINE = re.compile(r"^genred: ops listening on (https?://127\.0\.0\.1:(\d+))\s*$")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
CHUNK_S = 3.0


def _env_path(name, what):
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"environment variable {name} is not set; it must name {what} "
                    f"(`meson test` sets it)", pytrace=False)
    path = pathlib.Path(value)
    if not path.exists():
        pytest.fail(f"{name}={value} does not exist; it must name {what}", pytrace=False)
    return path


@pytest.fixture(scope="session")
def source_dir():
    return _env_path("GENRED_SOURCE", "the genred repository root")


@pytest.fixture(scope="session")
def genred_bin():
    path = _env_path("GENRED_BIN", "the genred daemon binary")
    if not os.access(path, os.X_OK):
        pytest.fail(f"GENRED_BIN={path} is not executable", pytrace=False)
    return path


@pytest.fixture(scope="session")
def infer_tool():
    """tests/infer_npy: runs a model file on chunks from a .npy in C."""
    path = _env_path("GENRED_TOOL_INFER", "the infer_npy test tool")
    if not os.access(path, os.X_OK):
        pytest.fail(f"GENRED_TOOL_INFER={path} is not executable", pytrace=False)
    return str(path)


@pytest.fixture(scope="session")
def model_path(source_dir):
    path = source_dir / "models" / "gtzan-cnn.gmodel"
    if not path.is_file():
        pytest.fail(f"model file {path} is missing (train it or fetch it first)", pytrace=False)
    return path


@pytest.fixture(scope="session")
def gtzan_dir():
    path = _env_path("GENRED_SHARED", "the shared folder (with data/gtzan16k)") / "data" / "gtzan16k"
    if not path.is_dir() or not any(path.glob("*/*.flac")):
        pytest.fail(f"GTZAN data missing: no {path}/<genre>/*.flac", pytrace=False)
    return path


# --- the API contract -------------------------------------------------------

class ApiSpec:
    """openapi.yaml, with JSON Schema validation of its components.

    jsonschema 4.10 (Debian 12) predates the `referencing` library, so $refs
    are resolved with a RefResolver over the whole OpenAPI document."""

    def __init__(self, path):
        self.path = pathlib.Path(path)
        self.raw = self.path.read_bytes()
        self.doc = yaml.safe_load(self.raw)
        self.resolver = jsonschema.RefResolver(base_uri="", referrer=self.doc)

    def schema(self, name):
        return self.doc["components"]["schemas"][name]

    def errors(self, instance, schema):
        """Validation errors of instance against schema (a dict, or the
        name of a component schema)."""
        if isinstance(schema, str):
            schema = {"$ref": f"#/components/schemas/{schema}"}
        validator = jsonschema.Draft202012Validator(schema, resolver=self.resolver)
        return sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))

    def validate(self, instance, schema):
        errs = self.errors(instance, schema)
        if errs:
            where = schema if isinstance(schema, str) else "schema"
            detail = "; ".join(f"at {list(e.absolute_path)}: {e.message}" for e in errs[:5])
            raise AssertionError(f"does not match {where}: {detail}\n"
                                 f"instance: {json.dumps(instance)[:2000]}")

    def request_id_pattern(self):
        return re.compile(self.schema("RequestId")["pattern"])

    def paths(self, method, public=None):
        """The documented paths answering method ("get", "post"); with
        public, only those that need no API key (True: `security: []`) or
        only those that need one (False). tests/test_routes.c checks that
        these are exactly the routes of src/routes.c."""
        return [path for path, item in self.doc["paths"].items() if method in item
                and (public is None or (item[method].get("security") == []) == public)]


@pytest.fixture(scope="session")
def api(source_dir):
    path = source_dir / "openapi.yaml"
    if not path.is_file():
        pytest.fail(f"{path} is missing", pytrace=False)
    return ApiSpec(path)


def chunk_pick(k, m, n):
    """openapi.yaml's max_chunks: the window's chunk that is the k-th of m
    analysed out of n, the middle of the k-th of m equal parts."""
    return (2 * k + 1) * n // (2 * m)


def assert_classify_invariants(ans):
    """What every classify answer must satisfy beyond its schema: ordering,
    percent arithmetic, top/top3, the analysed span and, when present, the
    segments agreeing with the summary. With a music verdict the shares are
    of the music chunks (of all, when none is music), and audio that is not
    music has no top genre."""
    genres = ans["genres"]
    names = [g["genre"] for g in genres]
    chunks = ans["chunks"]
    music = ans.get("music")
    voters = music["chunks"] if music and music["chunks"] > 0 else chunks
    assert len(set(names)) == len(names), f"duplicate genres: {names}"
    keys = [(g["percent"], g["probability"]) for g in genres]
    assert keys == sorted(keys, reverse=True), f"genres not sorted by percent, probability: {keys}"
    total = sum(g["percent"] for g in genres)
    assert abs(total - 100.0) <= 0.01 + 1e-9, f"percents sum to {total}"
    for g in genres:
        votes = g["percent"] * voters / 100.0
        assert abs(votes - round(votes)) * 100.0 / voters <= 0.01 + 1e-9, \
            f"{g['genre']}: {g['percent']}% is not a share of {voters} chunks"
    if music:
        assert math.isclose(music["share"], music["chunks"] / chunks, abs_tol=1e-6)
        want = ("music" if music["share"] >= 0.75 else
                "not_music" if music["share"] <= 0.25 else "mixed")
        assert music["verdict"] == want, f"verdict {music} for share {music['share']}"
    if music and music["verdict"] == "not_music":
        assert ans["top"] is None and ans["top3"] == []
    else:
        assert ans["top"] == names[0]
        assert ans["top3"] == genres[:3]

    # The window the chunks come from: all of them, or max_chunks of them.
    span = ans["analyzed"]
    window = round((span["end_s"] - span["start_s"]) / CHUNK_S)
    assert math.isclose(span["end_s"], span["start_s"] + CHUNK_S * window, abs_tol=0.01), \
        f"analyzed {span} is not a whole number of chunks"
    assert window >= chunks, f"analyzed {span} holds fewer than {chunks} chunks"
    assert span["end_s"] <= ans["duration_s"] + 0.01, f"analyzed {span} beyond {ans['duration_s']} s"
    if not span["trimmed"]:
        assert span["start_s"] == 0.0, f"untrimmed answer starts at {span['start_s']}"
        assert ans["duration_s"] - span["end_s"] < CHUNK_S, "a whole chunk was left unanalysed"

    t = ans["timing_ms"]
    assert t["decode"] + t["features"] + t["inference"] <= t["total"] + 1.0, f"stages exceed total: {t}"

    if "segments" not in ans:
        return
    segs = ans["segments"]
    assert len(segs) == chunks, f"{len(segs)} segments for {chunks} chunks"
    for k, s in enumerate(segs):
        at = chunk_pick(k, chunks, window)
        assert math.isclose(s["start_s"], span["start_s"] + CHUNK_S * at, abs_tol=0.01), \
            f"segment {k} (the window's chunk {at}) starts at {s['start_s']}"
        assert math.isclose(s["end_s"], s["start_s"] + CHUNK_S, abs_tol=0.01), f"segment {k}: {s}"
        assert set(s["probabilities"]) == set(names), f"segment {k} genres differ from answer's"
        best = max(s["probabilities"].values())
        assert s["probabilities"][s["top"]] == best, f"segment {k}: top {s['top']} is not the argmax"
    if music:
        assert sum(s["music"] for s in segs) == music["chunks"]
        if music["chunks"] > 0:
            segs = [s for s in segs if s["music"]]
    for g in genres:
        votes = sum(1 for s in segs if s["top"] == g["genre"])
        assert abs(g["percent"] - 100.0 * votes / voters) <= 0.01 + 1e-9, \
            f"{g['genre']}: percent {g['percent']} but {votes}/{voters} segment votes"
        mean = sum(s["probabilities"][g["genre"]] for s in segs) / voters
        assert abs(g["probability"] - mean) <= 1e-3, \
            f"{g['genre']}: probability {g['probability']} but segment mean {mean}"


@pytest.fixture(scope="session")
def check_classify():
    return assert_classify_invariants


# --- the daemon -------------------------------------------------------------

class Daemon:
    """One running `genred serve`. Its stdout is read by a thread (the
    listening line, then drained so the pipe never fills); stderr goes to a
    log file that failures quote."""

    def __init__(self, binary, flags, log_path):
        self.argv = [str(binary), "serve"]
        for key, value in flags.items():
            self.argv += [f"--{key}", str(value)]
        self.log_path = pathlib.Path(log_path)
        self.stdout_lines = []
        self.url = None
        self.port = None
        self.ops_url = None   # with ops_port: the ops listener (printed first)
        self.ops_port = None
        # Settings come from the flags alone: GENRED_* variables of the test
        # environment (GENRED_WORKERS, GENRED_CONFIG, ...) would be read too.
        env = {k: v for k, v in os.environ.items() if not k.startswith("GENRED_")}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, env=env,
                                         stdout=subprocess.PIPE, stderr=log)
        lines = queue.Queue()
        self._reader = threading.Thread(target=self._read_stdout, args=(lines,), daemon=True)
        self._reader.start()
        self._wait_listening(lines)

    def _read_stdout(self, lines):
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            self.stdout_lines.append(line)
            lines.put(line)
        lines.put(None)

    def _wait_listening(self, lines):
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self._fail_start(f"no listening line within {START_TIMEOUT_S:.0f} s")
            try:
                line = lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if line is None:
                self._fail_start("stdout closed before the listening line")
            m = OPS_LINE.match(line)
            if m:
                self.ops_url, self.ops_port = m.group(1), int(m.group(2))
                continue
            m = LISTEN_LINE.match(line)
            if m:
                self.url, self.port = m.group(1), int(m.group(2))
                return

    def log_tail(self, limit=4000):
        try:
            return self.log_path.read_text("utf-8", "replace")[-limit:]
        except OSError as e:
            return f"(log unreadable: {e})"

    def _fail_start(self, why):
        if self.proc.poll() is None:
            self.proc.kill()
        rc = self.proc.wait(timeout=STOP_TIMEOUT_S)
        pytest.fail(f"genred did not start: {why} (exit status {rc})\n"
                    f"argv: {' '.join(self.argv)}\nstdout: {self.stdout_lines}\n"
                    f"stderr tail:\n{self.log_tail()}", pytrace=False)

    def alive(self):
        return self.proc.poll() is None

    def request(self, method, path, ops=False, **kw):
        """One HTTP request on a fresh connection (to the ops listener with
        ops=True); proxies from the environment are ignored. Thread-safe."""
        kw.setdefault("timeout", 60)
        with requests.Session() as s:
            s.trust_env = False
            return s.request(method, (self.ops_url if ops else self.url) + path, **kw)

    def stop(self):
        """SIGTERM, then wait; returns the exit status (kills and returns
        None if it does not exit in time)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT_S)
            rc = None
        self._reader.join(timeout=5)
        if not self._reader.is_alive():
            self.proc.stdout.close()
        return rc


def _base_flags(source_dir, model_path):
    return {"listen": "127.0.0.1", "port": "0", "model": str(model_path),
            "max-upload-bytes": "8M", "queue-capacity": "64"}


def _stop_all(daemons):
    failures = []
    for d in daemons:
        rc = d.stop()
        if rc != 0:
            failures.append(f"{' '.join(d.argv)}: exit status {rc} after SIGTERM "
                            f"(None = had to be killed)\nstderr tail:\n{d.log_tail()}")
    if failures:
        pytest.fail("\n".join(failures), pytrace=False)


@pytest.fixture(scope="session")
def daemon(genred_bin, source_dir, model_path, tmp_path_factory):
    d = Daemon(genred_bin, _base_flags(source_dir, model_path), tmp_path_factory.mktemp("daemon") / "stderr.log")
    yield d
    _stop_all([d])


@pytest.fixture
def start_daemon(genred_bin, source_dir, model_path, tmp_path):
    """start_daemon({"workers": 1, ...}) -> Daemon with those flags on top of
    the session daemon's; every daemon started is stopped (and must exit 0)
    when the test ends."""
    started = []

    def start(overrides):
        flags = _base_flags(source_dir, model_path)
        flags.update({k: str(v) for k, v in overrides.items()})
        d = Daemon(genred_bin, flags, tmp_path / f"daemon{len(started)}.log")
        started.append(d)
        return d

    yield start
    _stop_all(started)


# --- test audio -------------------------------------------------------------

def flac_duration_s(path):
    """Duration from the FLAC STREAMINFO block (total samples / rate)."""
    with open(path, "rb") as f:
        head = f.read(42)
    if len(head) < 42 or head[:4] != b"fLaC" or (head[4] & 0x7F) != 0:
        raise ValueError(f"{path}: no FLAC STREAMINFO")
    si = head[8:42]
    rate = (si[10] << 12) | (si[11] << 4) | (si[12] >> 4)
    total = ((si[13] & 0x0F) << 32) | int.from_bytes(si[14:18], "big")
    if rate == 0 or total == 0:
        raise ValueError(f"{path}: STREAMINFO lacks rate or length")
    return total / rate


class Audio:
    """Test audio, each file made on first use. The sources are the first
    (sorted) full-length blues excerpts of GTZAN, so every run uses the same
    music."""

    GENRE = "blues"
    FFMPEG_TIMEOUT_S = 120

    def __init__(self, gtzan_dir, out_dir):
        self.gtzan_dir = gtzan_dir
        self.out = out_dir
        if shutil.which("ffmpeg") is None:
            pytest.fail("the ffmpeg CLI is needed to make test audio and is not on PATH",
                        pytrace=False)

    def excerpts(self, n):
        """The first n excerpts of GENRE that last at least 30 s."""
        found = []
        for path in sorted((self.gtzan_dir / self.GENRE).glob("*.flac")):
            if flac_duration_s(path) >= 30.0:
                found.append(path)
                if len(found) == n:
                    return found
        pytest.fail(f"need {n} excerpts of >= 30 s in {self.gtzan_dir / self.GENRE}, "
                    f"found {len(found)}", pytrace=False)

    def _ffmpeg(self, name, *args):
        out = self.out / name
        argv = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
                *map(str, args), str(out)]
        try:
            run = subprocess.run(argv, capture_output=True, timeout=self.FFMPEG_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"ffmpeg timed out: {' '.join(argv)}", pytrace=False)
        if run.returncode != 0 or not out.is_file():
            pytest.fail(f"ffmpeg failed ({run.returncode}): {' '.join(argv)}\n"
                        f"{run.stderr.decode('utf-8', 'replace')[-2000:]}", pytrace=False)
        return out

    def _concat(self, name, sources, *encode):
        inputs = []
        for s in sources:
            inputs += ["-i", s]
        graph = "".join(f"[{i}:a]" for i in range(len(sources)))
        graph += f"concat=n={len(sources)}:v=0:a=1[out]"
        return self._ffmpeg(name, *inputs, "-filter_complex", graph, "-map", "[out]", *encode)

    @functools.cached_property
    def excerpt_flac(self):
        """The GTZAN original: 16 kHz mono FLAC, ~30.01 s."""
        return self.excerpts(1)[0]

    @functools.cached_property
    def excerpt_duration_s(self):
        return flac_duration_s(self.excerpt_flac)

    @functools.cached_property
    def excerpt_mp3(self):
        return self._ffmpeg("excerpt.mp3", "-i", self.excerpt_flac, "-ar", "44100", "-ac", "2",
                            "-c:a", "libmp3lame", "-b:a", "192k")

    @functools.cached_property
    def excerpt_wav(self):
        return self._ffmpeg("excerpt.wav", "-i", self.excerpt_flac, "-ar", "44100", "-ac", "2",
                            "-c:a", "pcm_s16le")

    @functools.cached_property
    def excerpt_ogg(self):
        return self._ffmpeg("excerpt.ogg", "-i", self.excerpt_flac, "-ar", "44100", "-ac", "2",
                            "-c:a", "libvorbis", "-q:a", "5")

    @functools.cached_property
    def excerpt_m4a(self):
        """AAC in M4A, as iTunes libraries and most downloads hold music."""
        return self._ffmpeg("excerpt.m4a", "-i", self.excerpt_flac, "-ar", "44100", "-ac", "2",
                            "-c:a", "aac", "-b:a", "192k")

    @functools.cached_property
    def excerpt_aiff(self):
        return self._ffmpeg("excerpt.aiff", "-i", self.excerpt_flac, "-ar", "44100", "-ac", "2",
                            "-c:a", "pcm_s16be")

    @functools.cached_property
    def song_sources(self):
        return self.excerpts(6)

    @functools.cached_property
    def song_duration_s(self):
        return sum(flac_duration_s(p) for p in self.song_sources)

    @functools.cached_property
    def song_mp3(self):
        """~3 minutes: six excerpts of one genre, 44.1 kHz stereo MP3 (~4.3 MB)."""
        return self._concat("song.mp3", self.song_sources, "-ar", "44100", "-ac", "2",
                            "-c:a", "libmp3lame", "-b:a", "192k")

    @functools.cached_property
    def long_sources(self):
        return self.excerpts(20)

    @functools.cached_property
    def long_duration_s(self):
        return sum(flac_duration_s(p) for p in self.long_sources)

    @functools.cached_property
    def long_wav(self):
        """~10 minutes: twenty excerpts, 16 kHz mono WAV (~19 MB)."""
        return self._concat("long.wav", self.long_sources, "-ar", "16000", "-ac", "1",
                            "-c:a", "pcm_s16le")

    @functools.cached_property
    def short_wav(self):
        """2 s, shorter than one chunk."""
        return self._ffmpeg("short.wav", "-i", self.excerpt_flac, "-t", "2", "-ar", "44100",
                            "-ac", "2", "-c:a", "pcm_s16le")

    @functools.cached_property
    def empty_wav(self):
        """A valid WAV header with no samples at all."""
        path = self.out / "empty.wav"
        with wave.open(str(path), "wb") as w:
            w.setnchannels(2)
            w.setsampwidth(2)
            w.setframerate(44100)
            w.writeframes(b"")
        return path

    @functools.cached_property
    def video_only_ogg(self):
        """An Ogg file whose only stream is Theora video: a whitelisted
        container with no audio stream."""
        return self._ffmpeg("video.ogg", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=5",
                            "-t", "2", "-c:v", "libtheora", "-f", "ogg")


@pytest.fixture(scope="session")
def audio(gtzan_dir, tmp_path_factory):
    return Audio(gtzan_dir, tmp_path_factory.mktemp("audio"))


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """(cert, key): a self-signed certificate for 127.0.0.1, made with openssl."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make a test certificate (Debian package openssl)",
                    pytrace=False)
    out = tmp_path_factory.mktemp("tls")
    cert, key = out / "cert.pem", out / "key.pem"
    run = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                          "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                          "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                          "-keyout", str(key), "-out", str(cert)],
                         capture_output=True, timeout=60)
    assert run.returncode == 0, run.stderr.decode()
    return cert, key


@pytest.fixture(scope="session")
def build_root():
    """The meson build tree the tests run from (GENRED_TEST_BUILD_ROOT)."""
    value = os.environ.get("GENRED_TEST_BUILD_ROOT")
    if not value or not (pathlib.Path(value) / "build.ninja").is_file():
        pytest.fail(f"GENRED_TEST_BUILD_ROOT={value!r} is not a meson build tree "
                    f"(`meson test` sets it)", pytrace=False)
    return pathlib.Path(value)
