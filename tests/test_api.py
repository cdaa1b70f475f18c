"""test_api.py - genred's HTTP API end to end, against openapi.yaml.

Starts the real daemon (fixtures in conftest.py) with the real model and
sends it audio made at test time from real GTZAN excerpts. Every answer is
validated against the schemas of openapi.yaml and checked for what the
contract promises beyond them (percent shares, ordering, the trim rule, the
chunk timeline); every malformed request for its status and error code; the
operational routes (/healthz, /readyz, /v1/model, /metrics, /openapi.yaml)
for their content; and the daemon for surviving all of it.

What it does not do: judge accuracy (the evaluation's job) or compare
features and probabilities with a reference (test_mel.py, test_parity.py).
"""
import collections
import concurrent.futures
import json
import math
import os
import random
import re
import socket
import subprocess
import threading
import time

import pytest

import conftest
from conftest import chunk_pick

CLASSIFY = "/v1/classify"
CONTENT_TYPES = {".mp3": "audio/mpeg", ".wav": "audio/wav", ".flac": "audio/flac",
                 ".ogg": "audio/ogg", ".m4a": "audio/mp4", ".aiff": "audio/aiff"}
UPLOAD_LIMIT = 8 * 1024 * 1024  # the daemons' --max-upload-bytes 8M
TRIM_S = 15.0                    # the default trim at each end


# --- helpers ----------------------------------------------------------------

def post_audio(d, body, content_type, params=None, headers=None, timeout=60):
    h = dict(headers or {})
    if content_type is not None:
        h["Content-Type"] = content_type
    return d.request("POST", CLASSIFY, data=body, params=params, headers=h, timeout=timeout)


def media_type(value):
    return (value or "").split(";")[0].strip().lower()


def expect_json(api, r, status):
    """Status, JSON Content-Type and a sane X-Request-Id; returns the body."""
    assert r.status_code == status, f"expected {status}, got {r.status_code}: {r.text[:500]}"
    assert media_type(r.headers.get("Content-Type")) == "application/json", r.headers
    rid = r.headers.get("X-Request-Id")
    assert rid and api.request_id_pattern().fullmatch(rid), f"bad X-Request-Id {rid!r}"
    return r.json()


def expect_answer(api, check_classify, r):
    ans = expect_json(api, r, 200)
    api.validate(ans, "ClassifyResult")
    check_classify(ans)
    return ans


def expect_error(api, r, status, code):
    body = expect_json(api, r, status)
    api.validate(body, "Error")
    assert body["error"]["code"] == code, body
    return body


def expect_retry_after(value):
    assert value is not None, "503 without Retry-After"
    assert re.fullmatch(r"[0-9]+", value.strip()) and int(value) >= 1, f"Retry-After {value!r}"


def allow_tokens(r):
    return {t.strip().upper() for t in r.headers.get("Allow", "").split(",") if t.strip()}


def close_to(a, b, tol=0.01):
    return math.isclose(a, b, abs_tol=tol)


# --- fixtures ---------------------------------------------------------------

@pytest.fixture(scope="module")
def model_desc(daemon, api):
    body = expect_json(api, daemon.request("GET", "/v1/model"), 200)
    api.validate(body, "ModelDescription")
    return body


@pytest.fixture(scope="module")
def classified(daemon, api, check_classify, audio):
    """classified("excerpt_mp3", content_type=None, **query) -> the checked
    answer of the session daemon, each distinct request sent once."""
    cache = {}

    def get(name, content_type=None, **query):
        key = (name, content_type, tuple(sorted(query.items())))
        if key not in cache:
            path = getattr(audio, name)
            ctype = content_type or CONTENT_TYPES[path.suffix]
            r = post_audio(daemon, path.read_bytes(), ctype, params=query or None)
            cache[key] = expect_answer(api, check_classify, r)
        return cache[key]

    return get


# --- operational routes -----------------------------------------------------

def test_healthz(daemon, api):
    body = expect_json(api, daemon.request("GET", "/healthz"), 200)
    api.validate(body, "Health")
    assert body == {"status": "ok"}
    head = daemon.request("HEAD", "/healthz")
    assert head.status_code == 200 and head.content == b"" and head.headers.get("X-Request-Id")


def test_readyz_when_idle(daemon, api):
    body = expect_json(api, daemon.request("GET", "/readyz"), 200)
    api.validate(body, "Ready")
    assert body == {"status": "ready"}


def test_model_description(model_desc):
    f = model_desc["features"]
    # The API's chunk is 3 s: the model's frames per chunk and hop must say so.
    assert f["chunk_frames"] * f["hop_length"] == 3 * f["sample_rate"], f
    assert model_desc["input"] == [1, f["n_mels"], f["chunk_frames"]]
    assert model_desc["layers"][-1]["output"] == [len(model_desc["genres"])]
    assert f["fmax"] <= f["sample_rate"] / 2 and f["fmin"] < f["fmax"]


def test_openapi_yaml_is_served(daemon, api):
    r = daemon.request("GET", "/openapi.yaml")
    assert r.status_code == 200
    assert media_type(r.headers.get("Content-Type")) == "application/yaml"
    assert r.content == api.raw, "served document differs from openapi.yaml in the repository"


WEB_FILES = {"/": ("index.html", "text/html"), "/app.js": ("app.js", "text/javascript"),
             "/style.css": ("style.css", "text/css")}


@pytest.mark.parametrize("route", WEB_FILES)
def test_web_page_is_served(daemon, api, source_dir, route):
    """The page and its files, byte for byte as in web/, with the policy
    openapi.yaml promises. (tests/web/ drives the page in a browser.)"""
    name, mtype = WEB_FILES[route]
    r = daemon.request("GET", route)
    assert r.status_code == 200
    assert media_type(r.headers.get("Content-Type")) == mtype
    assert r.content == (source_dir / "web" / name).read_bytes()
    headers = api.doc["components"]["headers"]
    assert r.headers.get("Content-Security-Policy") == \
        headers["WebContentSecurityPolicy"]["schema"]["const"]
    assert r.headers.get("X-Content-Type-Options") == "nosniff"
    head = daemon.request("HEAD", route)
    assert head.status_code == 200 and head.content == b""
    assert head.headers.get("Content-Type") == r.headers.get("Content-Type")


# --- classification ---------------------------------------------------------

EXCERPTS = [("excerpt_mp3", "audio/mpeg", 0.1), ("excerpt_mp3", "application/octet-stream", 0.1),
            ("excerpt_wav", "audio/wav", 0.01), ("excerpt_wav", "audio/x-wav", 0.01),
            ("excerpt_flac", "audio/flac", 0.01), ("excerpt_ogg", "audio/ogg", 0.1),
            ("excerpt_m4a", "audio/mp4", 0.05), ("excerpt_m4a", "audio/x-m4a", 0.05),
            ("excerpt_aiff", "audio/aiff", 0.01), ("excerpt_aiff", "audio/x-aiff", 0.01)]


@pytest.mark.parametrize("name,content_type,duration_tol", EXCERPTS,
                         ids=[f"{n}-{c}" for n, c, _ in EXCERPTS])
def test_excerpt_is_analysed_whole(classified, audio, model_desc, name, content_type, duration_tol):
    """A 30 s excerpt is not trimmed: ten chunks from 0 to 30 s, whatever
    the container and Content-Type."""
    ans = classified(name, content_type)
    assert ans["chunks"] == 10
    assert ans["analyzed"]["trimmed"] is False
    assert close_to(ans["analyzed"]["start_s"], 0.0) and close_to(ans["analyzed"]["end_s"], 30.0)
    assert close_to(ans["duration_s"], audio.excerpt_duration_s, duration_tol), \
        (ans["duration_s"], audio.excerpt_duration_s)
    assert sorted(g["genre"] for g in ans["genres"]) == sorted(model_desc["genres"])
    assert ans["model"] == {"name": model_desc["name"], "version": model_desc["version"]}
    assert "segments" not in ans


def test_mp3_and_wav_give_the_same_top(classified):
    """The same excerpt as MP3 192k and as WAV. A strict comparison only
    where the WAV's winner leads by two chunk votes or more: one chunk
    flipping across the codec must not fail the test, a different winner
    on a clear margin must."""
    wav, mp3 = classified("excerpt_wav"), classified("excerpt_mp3")
    g = wav["genres"]
    lead_votes = round((g[0]["percent"] - g[1]["percent"]) * wav["chunks"] / 100.0)
    if lead_votes >= 2:
        assert mp3["top"] == wav["top"], (mp3["genres"], wav["genres"])
    else:
        assert mp3["top"] in [x["genre"] for x in wav["top3"]], (mp3["genres"], wav["genres"])


def test_multipart_equals_raw_upload(daemon, api, check_classify, audio, classified):
    body = audio.excerpt_mp3.read_bytes()
    r = daemon.request("POST", CLASSIFY, data={"comment": "fields other than file are ignored"},
                       files={"file": ("song.mp3", body, "application/octet-stream")})
    ans = expect_answer(api, check_classify, r)
    raw = classified("excerpt_mp3")
    for key in ("genres", "top", "chunks", "duration_s", "analyzed", "model"):
        assert ans[key] == raw[key], key


def test_every_documented_content_type_is_accepted(daemon, api, check_classify, audio):
    """openapi.yaml's raw Content-Types are the ones http.c accepts: each
    gets an answer (the bytes decide the format, so one file serves all)."""
    body = audio.excerpt_wav.read_bytes()
    types = [t for t in api.doc["paths"][CLASSIFY]["post"]["requestBody"]["content"]
             if t != "multipart/form-data"]
    assert {"audio/mp4", "audio/x-m4a", "audio/aiff", "audio/x-aiff"} <= set(types), types
    for ctype in types:
        expect_answer(api, check_classify, post_audio(daemon, body, ctype))
    for ctype in ("audio/x-ms-wma", "video/mp4", "audio/aac", "text/plain"):
        r = post_audio(daemon, body, ctype)
        assert r.status_code == 415, (ctype, r.status_code)


def test_no_content_type_is_octet_stream(daemon, api, check_classify, audio, classified):
    """Without a Content-Type the format is recognised from the bytes."""
    r = post_audio(daemon, audio.excerpt_mp3.read_bytes(), None)
    ans = expect_answer(api, check_classify, r)
    assert ans["genres"] == classified("excerpt_mp3")["genres"]


def test_segments_timeline(classified):
    seg = classified("excerpt_wav", segments=1)
    plain = classified("excerpt_wav")
    off = classified("excerpt_wav", segments=0)
    assert len(seg["segments"]) == seg["chunks"] == 10
    assert [s["start_s"] for s in seg["segments"]] == pytest.approx([3.0 * k for k in range(10)],
                                                                     abs=0.01)
    assert "segments" not in plain and "segments" not in off
    assert seg["genres"] == plain["genres"] == off["genres"], "segments=1 changed the answer"


def mel_picture_reference(chunks, feat):
    """openapi.yaml's MelPicture, recomputed with numpy from the model input
    `genred features` writes ([chunk][band][frame], normalised): back to dB,
    block means down to <= 64 x 600, 80 dB below the loudest cell. Returns
    (dB picture, min_db, max_db, bytes)."""
    import numpy as np
    n, bands, frames_per_chunk = chunks.shape
    frames = n * frames_per_chunk
    db = chunks.transpose(1, 0, 2).reshape(bands, frames).astype(np.float64)
    db = db * feat["norm_std"] + feat["norm_mean"]
    bstep, fstep = -(-bands // 64), -(-frames // 600)
    rows, cols = np.arange(0, bands, bstep), np.arange(0, frames, fstep)
    sums = np.add.reduceat(np.add.reduceat(db, rows, axis=0), cols, axis=1)
    counts = np.outer(np.diff(np.append(rows, bands)), np.diff(np.append(cols, frames)))
    pic = sums / counts
    hi = pic.max()
    lo = max(pic.min(), hi - 80.0)
    q = np.clip(np.floor((pic - lo) / (hi - lo) * 255.0 + 0.5), 0, 255)
    return pic, lo, hi, q


@pytest.mark.parametrize("name,chunks,columns", [("excerpt_mp3", 10, 427), ("song_mp3", 50, 582)])
def test_mel_picture(classified, audio, api, genred_bin, model_path, model_desc, tmp_path,
                     name, chunks, columns):
    """mel=1 adds a picture of exactly the chunks the model classified (the
    trim rule included) and changes nothing else; every byte is within 1 of
    an independent numpy computation from `genred features` of the file."""
    import base64
    import os
    import subprocess

    import numpy as np
    pic = classified(name, mel=1)
    plain = classified(name)
    assert "mel" not in plain
    assert {k: v for k, v in pic.items() if k not in ("mel", "timing_ms")} == \
        {k: v for k, v in plain.items() if k != "timing_ms"}, "mel=1 changed the answer"
    assert pic["chunks"] == chunks
    mel = pic["mel"]
    api.validate(mel, "MelPicture")
    data = np.frombuffer(base64.b64decode(mel["data"], validate=True), dtype=np.uint8)
    assert (mel["bands"], mel["frames"]) == (64, columns)
    assert data.size == mel["bands"] * mel["frames"]
    assert len(json.dumps(pic)) < 100_000, "the picture is not small"

    out = tmp_path / "features.npy"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENRED_")}
    run = subprocess.run([str(genred_bin), "features", "--model", str(model_path),
                          str(getattr(audio, name)), "-o", str(out)],
                         env=env, capture_output=True, timeout=120)
    assert run.returncode == 0, run.stderr.decode("utf-8", "replace")
    model_input = np.load(out)
    assert model_input.shape[0] == chunks
    ref, lo, hi, q = mel_picture_reference(model_input, model_desc["features"])
    assert mel["max_db"] == pytest.approx(hi, abs=1e-3)
    assert mel["min_db"] == pytest.approx(lo, abs=1e-3)
    got = data.reshape(mel["bands"], mel["frames"]).astype(int)
    assert np.abs(got - q).max() <= 1, "picture differs from the model input"
    assert (got != q).mean() < 0.01, "picture differs from the model input in many cells"
    # A real song fills the scale: loud and quiet cells, not one flat colour.
    assert got.max() == 255 and got.min() < 64 and np.unique(got).size > 100


def test_song_is_trimmed(classified, audio):
    """~180 s: 15 s cut at each end, 150 s analysed in 50 chunks."""
    ans = classified("song_mp3", segments=1)
    assert ans["analyzed"]["trimmed"] is True
    assert close_to(ans["duration_s"], audio.song_duration_s, 0.1)
    assert close_to(ans["analyzed"]["start_s"], TRIM_S)
    assert ans["chunks"] == int((audio.song_duration_s - 2 * TRIM_S) // 3) == 50
    assert close_to(ans["analyzed"]["end_s"], TRIM_S + 150.0)
    assert close_to(ans["segments"][0]["start_s"], TRIM_S)
    assert close_to(ans["segments"][-1]["end_s"], TRIM_S + 150.0)


def test_song_untrimmed_with_trim_0(classified, audio):
    ans = classified("song_mp3", trim=0)
    assert ans["analyzed"]["trimmed"] is False
    assert ans["chunks"] == int(audio.song_duration_s // 3) == 60
    assert close_to(ans["analyzed"]["start_s"], 0.0) and close_to(ans["analyzed"]["end_s"], 180.0)


def test_concurrent_requests_agree_with_sequential(daemon, api, check_classify, audio, classified):
    """Chunks of concurrent requests share batches; that must not change
    any answer beyond float rounding."""
    reference = classified("excerpt_mp3")
    body = audio.excerpt_mp3.read_bytes()
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        rs = list(ex.map(lambda _: post_audio(daemon, body, "audio/mpeg", timeout=90), range(4)))
    for r in rs:
        ans = expect_answer(api, check_classify, r)
        assert [(g["genre"], g["percent"]) for g in ans["genres"]] == \
            [(g["genre"], g["percent"]) for g in reference["genres"]]
        for a, b in zip(ans["genres"], reference["genres"]):
            assert a["probability"] == pytest.approx(b["probability"], abs=1e-4)


# --- request ids ------------------------------------------------------------

def test_request_id_echoed_when_sane(daemon, api):
    for method, path, status, rid in (("GET", "/healthz", 200, "test-req.42_ABC"),
                                      ("GET", "/healthz", 200, "x" * 64),
                                      ("GET", "/no/such/route", 404, "test-req.43"),
                                      ("GET", CLASSIFY, 405, "test-req.44")):
        r = daemon.request(method, path, headers={"X-Request-Id": rid})
        expect_json(api, r, status)
        assert r.headers["X-Request-Id"] == rid, (path, r.headers)


def test_request_id_generated_when_absent_or_insane(daemon, api):
    for bad in ("has space", "x" * 65, "semi;colon", "quote\"d"):
        r = daemon.request("GET", "/healthz", headers={"X-Request-Id": bad})
        expect_json(api, r, 200)
        assert r.headers["X-Request-Id"] != bad
    ids = {daemon.request("GET", "/healthz").headers.get("X-Request-Id") for _ in range(3)}
    assert len(ids) == 3 and None not in ids, f"generated ids not unique: {ids}"


# --- metrics ----------------------------------------------------------------

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?[ \t]+(\S+)(?:[ \t]+-?[0-9]+)?$")
LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"\s*(?:,|$)')
TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}


def parse_metrics(text):
    """Prometheus text format 0.0.4 -> (types {name: type}, samples
    [(name, labels, value)]); asserts every line is well formed."""
    types, samples = {}, []
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 2 and parts[1] == "TYPE":
                assert len(parts) == 4 and parts[3].strip() in TYPES, f"line {n}: {line!r}"
                types[parts[2]] = parts[3].strip()
            continue
        m = SAMPLE.match(line)
        assert m, f"line {n} is not a sample: {line!r}"
        labels, rest = {}, m.group(2) or ""
        pos = 0
        while pos < len(rest):
            lm = LABEL.match(rest, pos)
            assert lm and lm.end() > pos, f"line {n}: bad labels {rest!r}"
            labels[lm.group(1)] = lm.group(2)
            pos = lm.end()
        value = float(m.group(3))  # accepts NaN, +Inf, -Inf as the format does
        samples.append((m.group(1), labels, value))
    return types, samples


def scrape(d):
    r = d.request("GET", "/metrics")
    assert r.status_code == 200
    ctype = r.headers.get("Content-Type", "").replace(" ", "").lower()
    assert ctype.startswith("text/plain") and "version=0.0.4" in ctype, ctype
    return parse_metrics(r.text)


def requests_total(samples):
    return sum(v for name, _, v in samples if name == "genred_requests_total")


def check_histograms(types, samples):
    for family, kind in types.items():
        if kind != "histogram":
            continue
        series = collections.defaultdict(list)
        counts = {}
        for name, labels, v in samples:
            key = tuple(sorted((k, x) for k, x in labels.items() if k != "le"))
            if name == family + "_bucket":
                series[key].append((float(labels["le"]), v))
            elif name == family + "_count":
                counts[key] = v
        assert series, f"histogram {family} has no buckets"
        for key, buckets in series.items():
            buckets.sort()
            values = [v for _, v in buckets]
            assert values == sorted(values), f"{family}{dict(key)}: buckets not cumulative"
            assert buckets[-1][0] == math.inf, f"{family}{dict(key)}: no +Inf bucket"
            assert counts.get(key) == buckets[-1][1], f"{family}{dict(key)}: _count != +Inf bucket"


def test_metrics(daemon, classified):
    classified("excerpt_mp3")  # at least one classification has been counted
    types, samples = scrape(daemon)
    assert types.get("genred_requests_total", types.get("genred_requests")) == "counter", types
    routes = {v for name, labels, _ in samples if name == "genred_requests_total"
              for v in labels.values()}
    assert CLASSIFY in routes, f"no genred_requests_total sample for {CLASSIFY}: {routes}"
    check_histograms(types, samples)

    before = requests_total(samples)
    for _ in range(3):
        assert daemon.request("GET", "/healthz").status_code == 200
    deadline = time.monotonic() + 5.0  # a request may be counted just after its answer
    while True:
        after = requests_total(scrape(daemon)[1])
        if after >= before + 3 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert after >= before + 3, f"genred_requests_total went from {before} to {after}"


# --- malformed requests -----------------------------------------------------

NOISE = random.Random(20240601).randbytes(64 * 1024)
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR" + random.Random(7).randbytes(4096)
TEXT = b"This is plain text, not audio.\n" * 64


def raw_body(content_type, make_body, params=None):
    def make(audio):
        headers = {} if content_type is None else {"Content-Type": content_type}
        return {"headers": headers, "data": make_body(audio), "params": params}
    return make


def mp3_bytes(audio):
    return audio.excerpt_mp3.read_bytes()


def multipart_empty_file(_audio):
    return {"files": {"file": ("song.mp3", b"", "audio/mpeg")}}


def multipart_without_file(audio):
    return {"data": {"name": "song"},
            "files": {"audio": ("song.mp3", mp3_bytes(audio), "audio/mpeg")}}


def nothing(_audio):
    return {}


Bad = collections.namedtuple("Bad", "id method path status code allow make")
BAD = [
    Bad("random-bytes", "POST", CLASSIFY, 415, "unsupported_media", None,
        raw_body("application/octet-stream", lambda a: NOISE)),
    Bad("random-bytes-as-mpeg", "POST", CLASSIFY, 415, "unsupported_media", None,
        raw_body("audio/mpeg", lambda a: NOISE)),
    Bad("random-bytes-as-wav", "POST", CLASSIFY, 415, "unsupported_media", None,
        raw_body("audio/wav", lambda a: NOISE)),
    Bad("png-bytes", "POST", CLASSIFY, 415, "unsupported_media", None,
        raw_body("application/octet-stream", lambda a: PNG)),
    Bad("image-png-content-type", "POST", CLASSIFY, 415, "unsupported_media", None,
        raw_body("image/png", mp3_bytes)),
    Bad("text-plain", "POST", CLASSIFY, 415, "unsupported_media", None,
        raw_body("text/plain", lambda a: TEXT)),
    Bad("json-content-type", "POST", CLASSIFY, 415, "unsupported_media", None,
        raw_body("application/json", mp3_bytes)),
    Bad("no-content-type-text-bytes", "POST", CLASSIFY, 415, "unsupported_media", None,
        raw_body(None, lambda a: TEXT)),
    Bad("empty-body", "POST", CLASSIFY, 400, "bad_request", None,
        raw_body("audio/wav", lambda a: b"")),
    Bad("multipart-without-file", "POST", CLASSIFY, 400, "bad_request", None,
        multipart_without_file),
    Bad("multipart-empty-file", "POST", CLASSIFY, 400, "bad_request", None,
        multipart_empty_file),
    Bad("multipart-without-boundary", "POST", CLASSIFY, 400, "bad_request", None,
        raw_body("multipart/form-data", lambda a: b"--x\r\nContent-Disposition: form-data; "
                 b"name=\"file\"\r\n\r\nabc\r\n--x--\r\n")),
    Bad("trim-maybe", "POST", CLASSIFY, 400, "bad_request", None,
        raw_body("audio/mpeg", mp3_bytes, {"trim": "maybe"})),
    Bad("trim-2", "POST", CLASSIFY, 400, "bad_request", None,
        raw_body("audio/mpeg", mp3_bytes, {"trim": "2"})),
    Bad("trim-empty", "POST", CLASSIFY, 400, "bad_request", None,
        raw_body("audio/mpeg", mp3_bytes, {"trim": ""})),
    Bad("segments-yes", "POST", CLASSIFY, 400, "bad_request", None,
        raw_body("audio/mpeg", mp3_bytes, {"segments": "yes"})),
    Bad("mel-2", "POST", CLASSIFY, 400, "bad_request", None,
        raw_body("audio/mpeg", mp3_bytes, {"mel": "2"})),
    *[Bad(f"max-chunks-{v or 'empty'}", "POST", CLASSIFY, 400, "bad_request", None,
          raw_body("audio/mpeg", mp3_bytes, {"max_chunks": v}))
      for v in ("-1", "", "abc", "1e3", "8.0", " 8", "100001", "99999999999999999999")],
    Bad("2s-clip", "POST", CLASSIFY, 422, "unprocessable_audio", None,
        raw_body("audio/wav", lambda a: a.short_wav.read_bytes())),
    Bad("2s-clip-trim-0", "POST", CLASSIFY, 422, "unprocessable_audio", None,
        raw_body("audio/wav", lambda a: a.short_wav.read_bytes(), {"trim": "0"})),
    Bad("wav-without-samples", "POST", CLASSIFY, 422, "unprocessable_audio", None,
        raw_body("audio/wav", lambda a: a.empty_wav.read_bytes())),
    Bad("ogg-without-audio-stream", "POST", CLASSIFY, 422, "unprocessable_audio", None,
        raw_body("audio/ogg", lambda a: a.video_only_ogg.read_bytes())),
    Bad("unknown-route", "GET", "/v2/classify", 404, "not_found", None, nothing),
    Bad("below-classify", "POST", CLASSIFY + "/extra", 404, "not_found", None,
        raw_body("audio/mpeg", mp3_bytes)),
    Bad("index-html", "GET", "/index.html", 404, "not_found", None, nothing),
    Bad("post-web-page", "POST", "/", 405, "method_not_allowed", "GET", nothing),
    Bad("get-classify", "GET", CLASSIFY, 405, "method_not_allowed", "POST", nothing),
    Bad("post-healthz", "POST", "/healthz", 405, "method_not_allowed", "GET", nothing),
    Bad("delete-model", "DELETE", "/v1/model", 405, "method_not_allowed", "GET", nothing),
    Bad("put-metrics", "PUT", "/metrics", 405, "method_not_allowed", "GET", nothing),
]


def send_bad(daemon, api, audio, case):
    r = daemon.request(case.method, case.path, **case.make(audio))
    expect_error(api, r, case.status, case.code)
    if case.allow:
        tokens = allow_tokens(r)
        assert case.allow in tokens, f"Allow: {r.headers.get('Allow')!r}"
        assert case.method not in tokens, f"Allow: {r.headers.get('Allow')!r}"


@pytest.mark.parametrize("case", BAD, ids=[c.id for c in BAD])
def test_malformed_request(daemon, api, audio, case):
    send_bad(daemon, api, audio, case)


# --- uploads over the limit -------------------------------------------------

def _response_complete(data):
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    m = re.search(rb"(?im)^content-length:\s*([0-9]+)\s*$", head)
    return m is not None and len(body) >= int(m.group(1))


def raw_exchange(port, head, pieces, timeout=30.0):
    """Sends head and body pieces from a thread while this one reads, so an
    answer sent before the body is complete (and the connection closed, as a
    server should for an upload it refuses) is still read. Returns (status,
    headers with lower-case names, body)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)

    def send():
        try:
            sock.sendall(head)
            for p in pieces:
                sock.sendall(p)
        except OSError:
            pass  # the server stopped reading after answering

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    data = b""
    try:
        while not _response_complete(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass  # a reset after the answer arrived; judged by what was read
    finally:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
        sender.join(timeout)
    head_bytes, sep, body = data.partition(b"\r\n\r\n")
    assert sep, f"no complete HTTP answer; read {data[:300]!r}"
    lines = head_bytes.decode("iso-8859-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body


def check_raw_413(api, status, headers, body):
    assert status == 413, (status, body[:300])
    assert media_type(headers.get("content-type")) == "application/json"
    assert api.request_id_pattern().fullmatch(headers.get("x-request-id", ""))
    err = json.loads(body)
    api.validate(err, "Error")
    assert err["error"]["code"] == "payload_too_large"


def too_large_with_length(port):
    size = UPLOAD_LIMIT + 1024 * 1024
    head = (f"POST {CLASSIFY} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: audio/wav\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n")
    piece = bytes(64 * 1024)
    return raw_exchange(port, head.encode(), [piece] * (size // len(piece)))


def too_large_chunked(port):
    head = (f"POST {CLASSIFY} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: audio/wav\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    data = bytes(64 * 1024)
    piece = f"{len(data):x}\r\n".encode() + data + b"\r\n"
    n = (UPLOAD_LIMIT + 1024 * 1024) // len(data)
    return raw_exchange(port, head.encode(), [piece] * n + [b"0\r\n\r\n"])


def test_upload_over_limit_with_content_length(daemon, api):
    check_raw_413(api, *too_large_with_length(daemon.port))
    assert daemon.alive()


def test_upload_over_limit_chunked(daemon, api):
    check_raw_413(api, *too_large_chunked(daemon.port))
    assert daemon.alive()


# --- max_chunks -------------------------------------------------------------

@pytest.mark.parametrize("name,keep", [("song_mp3", 8), ("song_mp3", 1), ("song_mp3", 40),
                                       ("excerpt_ogg", 3), ("excerpt_mp3", 10)])
def test_max_chunks_analyses_the_full_analysis_chunks(classified, name, keep):
    """max_chunks=N analyses N chunks spread evenly over the window. For the
    song at 8 and 1 only those chunks are decoded; at 40 of 50, and for Ogg
    (whose length is unknown before decoding), everything is, and the chunks
    are chosen afterwards. Either way each segment is the full analysis'
    segment at the picked place, and the summary is the segments'."""
    full = classified(name, segments=1)
    part = classified(name, segments=1, max_chunks=keep)
    n = full["chunks"]
    assert part["chunks"] == min(keep, n)
    assert part["analyzed"] == full["analyzed"], "the window must not change"
    assert part["duration_s"] == full["duration_s"]
    for k, seg in enumerate(part["segments"]):
        ref = full["segments"][chunk_pick(k, part["chunks"], n)]
        assert (seg["start_s"], seg["end_s"], seg["top"]) == \
            (ref["start_s"], ref["end_s"], ref["top"]), k
        # Chunks batched with others' can differ in the last digits.
        assert seg["probabilities"] == pytest.approx(ref["probabilities"], abs=1e-5), k


def test_max_chunks_conf_default_and_query_override(start_daemon, api, check_classify, audio):
    d = start_daemon({"max-chunks": 4})
    body = audio.song_mp3.read_bytes()
    ans = expect_answer(api, check_classify, post_audio(d, body, "audio/mpeg"))
    assert ans["chunks"] == 4
    ans = expect_answer(api, check_classify, post_audio(d, body, "audio/mpeg",
                                                        params={"max_chunks": 0}))
    assert ans["chunks"] == 50
    ans = expect_answer(api, check_classify, post_audio(d, body, "audio/mpeg",
                                                        params={"max_chunks": 12}))
    assert ans["chunks"] == 12


# --- limits of other daemons ------------------------------------------------

def test_audio_longer_than_max_duration(start_daemon, api, check_classify, audio):
    d = start_daemon({"max-duration-s": 60})
    expect_error(api, post_audio(d, audio.song_mp3.read_bytes(), "audio/mpeg"), 422,
                 "unprocessable_audio")
    # Under the limit, the same daemon answers.
    ans = expect_answer(api, check_classify, post_audio(d, audio.excerpt_mp3.read_bytes(),
                                                        "audio/mpeg"))
    assert ans["chunks"] == 10


def test_full_queue_answers_503_with_retry_after(start_daemon, api, check_classify, audio):
    """One classification slot, one waiting upload, one worker with one
    batch slot: eight simultaneous 10-minute uploads (trim=0, 200 chunks
    each, one chunk per forward pass) arrive within the time the first one
    holds the slot, so some must be refused with 503 + Retry-After and every
    other one answered in full. Bounded: at most two waves, 120 s per
    request."""
    d = start_daemon({"workers": 1, "max-active-requests": 1, "queue-capacity": 1,
                      "max-batch": 1, "max-upload-bytes": "32M", "max-duration-s": 900})
    body = audio.long_wav.read_bytes()
    want_chunks = int(audio.long_duration_s // 3)
    threads = 8

    stop_probe = threading.Event()
    probes = []

    def probe_readyz():
        while not stop_probe.is_set() and len(probes) < 2000:
            try:
                probes.append(d.request("GET", "/readyz", timeout=10))
            except Exception as e:  # noqa: BLE001 - recorded and judged below
                probes.append(e)
            stop_probe.wait(0.05)

    def one(barrier):
        barrier.wait(timeout=60)
        return post_audio(d, body, "audio/wav", params={"trim": 0}, timeout=120)

    prober = threading.Thread(target=probe_readyz, daemon=True)
    prober.start()
    answers = []
    try:
        for _wave in range(2):
            barrier = threading.Barrier(threads)
            with concurrent.futures.ThreadPoolExecutor(threads) as ex:
                answers += list(ex.map(lambda _: one(barrier), range(threads)))
            if any(r.status_code == 503 for r in answers):
                break
    finally:
        stop_probe.set()
        prober.join(15)

    statuses = collections.Counter(r.status_code for r in answers)
    assert statuses[503] >= 1, f"no 503 from a full queue: {dict(statuses)}"
    assert statuses[200] >= 1 and statuses[200] + statuses[503] == len(answers), dict(statuses)
    for r in answers:
        if r.status_code == 503:
            expect_error(api, r, 503, "busy")
            expect_retry_after(r.headers.get("Retry-After"))
        else:
            ans = expect_answer(api, check_classify, r)
            assert ans["chunks"] == want_chunks and ans["analyzed"]["trimmed"] is False

    for p in probes:
        assert not isinstance(p, Exception), f"/readyz failed during the burst: {p!r}"
        if p.status_code == 503:
            expect_error(api, p, 503, "busy")
            expect_retry_after(p.headers.get("Retry-After"))
        else:
            assert expect_json(api, p, 200) == {"status": "ready"}
    # Drained: ready again.
    assert expect_json(api, d.request("GET", "/readyz"), 200) == {"status": "ready"}


# --- CORS (cors_origins) -----------------------------------------------------

FRONT_END = "http://127.0.0.1:3000"
CORS_KEY = "cors-test-key-0123456789abcdef"


def tokens(value):
    return [t.strip() for t in (value or "").split(",") if t.strip()]


def route_methods(api, path):
    """What openapi.yaml documents for path, as Allow names it."""
    item = api.doc["paths"][path]
    return (["GET", "HEAD"] if "get" in item else []) + (["POST"] if "post" in item else []) + \
        ["OPTIONS"]


def preflight(d, path, origin, method, headers=""):
    h = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers:
        h["Access-Control-Request-Headers"] = headers
    return d.request("OPTIONS", path, headers=h)


@pytest.fixture(scope="module")
def cors_daemons(genred_bin, model_path, tmp_path_factory):
    """Daemons with cors_origins set: one open, one with API keys."""
    tmp = tmp_path_factory.mktemp("cors")
    keys = tmp / "keys"
    keys.write_text(CORS_KEY + "\n")
    flags = conftest._base_flags(None, model_path)
    flags["cors-origins"] = f"https://app.example.com, {FRONT_END}"
    open_ = conftest.Daemon(genred_bin, flags, tmp / "open.log")
    keyed = conftest.Daemon(genred_bin, {**flags, "api-keys-file": str(keys)}, tmp / "keyed.log")
    yield open_, keyed
    conftest._stop_all([open_, keyed])


def test_cors_listed_origin_reads_every_answer(cors_daemons, api, audio):
    """Answers to a listed origin carry Access-Control-Allow-Origin (errors
    too, so its page can show them) and expose the headers a page needs."""
    d, keyed = cors_daemons
    answers = [d.request("GET", "/healthz", headers={"Origin": FRONT_END}),
               post_audio(d, b"not audio" * 100, "audio/mpeg", headers={"Origin": FRONT_END}),
               post_audio(d, audio.excerpt_wav.read_bytes(), "audio/wav",
                          headers={"Origin": FRONT_END}),
               keyed.request("GET", "/v1/model", headers={"Origin": FRONT_END})]
    assert [r.status_code for r in answers] == [200, 415, 200, 401]
    for r in answers:
        assert r.headers.get("Access-Control-Allow-Origin") == FRONT_END, (r.status_code, r.headers)
        assert "Origin" in tokens(r.headers.get("Vary"))
        assert {"X-Request-Id", "Retry-After", "WWW-Authenticate"} <= \
            set(tokens(r.headers.get("Access-Control-Expose-Headers"))), r.headers


def test_cors_other_origins_get_no_cors_headers(cors_daemons, daemon, audio):
    d, _ = cors_daemons
    for origin in ("http://127.0.0.1:3001", "https://app.example.com.evil.test", "null",
                   "HTTP://127.0.0.1:3000", "http://127.0.0.1:3000/", ""):
        for r in (d.request("GET", "/healthz", headers={"Origin": origin}),
                  preflight(d, CLASSIFY, origin, "POST", "content-type")):
            assert "Access-Control-Allow-Origin" not in r.headers, (origin, r.headers)
            assert not any(k.lower().startswith("access-control-") for k in r.headers), r.headers
    r = d.request("GET", "/healthz")  # no Origin: not a browser's cross-origin call
    assert "Access-Control-Allow-Origin" not in r.headers
    # Without cors_origins (the default) nothing is said about origins at all.
    r = daemon.request("GET", "/healthz", headers={"Origin": FRONT_END})
    assert "Access-Control-Allow-Origin" not in r.headers and "Vary" not in r.headers


def test_cors_preflight_on_every_route(cors_daemons, api):
    """Every route of the table answers OPTIONS without a key: Allow and,
    for a listed origin's preflight, the same methods, the headers a page
    may send (Authorization only when keys are on) and a cache lifetime."""
    for d, keys_on in zip(cors_daemons, (False, True)):
        for path in api.paths("get") + api.paths("post"):
            want = route_methods(api, path)
            method = "POST" if "POST" in want else "GET"
            r = preflight(d, path, FRONT_END, method, "content-type, x-request-id")
            assert r.status_code == 204 and r.content == b"", (path, r.status_code, r.text)
            assert tokens(r.headers.get("Allow")) == want, (path, r.headers)
            assert tokens(r.headers.get("Access-Control-Allow-Methods")) == want, r.headers
            assert r.headers.get("Access-Control-Allow-Origin") == FRONT_END
            allowed = {t.lower() for t in tokens(r.headers.get("Access-Control-Allow-Headers"))}
            assert {"content-type", "x-request-id"} <= allowed, r.headers
            assert ("authorization" in allowed) == keys_on, (keys_on, r.headers)
            assert int(r.headers.get("Access-Control-Max-Age")) > 0
            # A plain OPTIONS: the methods, no CORS.
            plain = d.request("OPTIONS", path)
            assert plain.status_code == 204 and tokens(plain.headers.get("Allow")) == want
            assert "Access-Control-Allow-Methods" not in plain.headers
    r = cors_daemons[0].request("OPTIONS", "/no/such/route", headers={"Origin": FRONT_END})
    assert r.status_code == 404


def test_cors_preflight_then_keyed_upload(cors_daemons, api, check_classify, audio):
    """What a browser does for a page that sends its key: the preflight,
    then the upload with Authorization; a wrong key's 401 is readable."""
    _, keyed = cors_daemons
    r = preflight(keyed, CLASSIFY, FRONT_END, "POST", "authorization, content-type")
    assert r.status_code == 204 and "authorization" in r.headers["Access-Control-Allow-Headers"].lower()
    body = audio.excerpt_mp3.read_bytes()
    r = post_audio(keyed, body, "audio/mpeg",
                   headers={"Origin": FRONT_END, "Authorization": f"Bearer {CORS_KEY}"})
    expect_answer(api, check_classify, r)
    assert r.headers["Access-Control-Allow-Origin"] == FRONT_END
    r = post_audio(keyed, body, "audio/mpeg",
                   headers={"Origin": FRONT_END, "Authorization": "Bearer wrong-key-0123456789abcdef"})
    expect_error(api, r, 401, "unauthorized")
    assert r.headers["Access-Control-Allow-Origin"] == FRONT_END


def test_cors_any_origin(start_daemon):
    """cors_origins = "*": any origin may read the answers, and the header
    says "*" rather than repeat what the client sent."""
    d = start_daemon({"cors-origins": "*"})
    for origin in ("https://anywhere.example", "http://127.0.0.1:9"):
        r = d.request("GET", "/healthz", headers={"Origin": origin})
        assert r.headers.get("Access-Control-Allow-Origin") == "*", r.headers
        r = preflight(d, CLASSIFY, origin, "POST", "content-type")
        assert r.status_code == 204 and r.headers.get("Access-Control-Allow-Origin") == "*"


@pytest.mark.parametrize("value", ["http://127.0.0.1:3000/", "HTTPS://APP.EXAMPLE.COM",
                                   "https://app.example.com:443", "app.example.com", "null",
                                   "ftp://x.example", "https://a.example, *", "http://[::1"])
def test_cors_origins_that_never_match_are_refused(genred_bin, model_path, value):
    r = subprocess.run([str(genred_bin), "serve", "--model", str(model_path), "--port", "0",
                        "--cors-origins", value], capture_output=True, text=True, timeout=30,
                       env={k: v for k, v in os.environ.items() if not k.startswith("GENRED_")})
    assert r.returncode == 2, (value, r.returncode, r.stdout)
    assert "cors_origins" in r.stderr and "not an origin as browsers send it" in r.stderr, r.stderr


# --- robustness -------------------------------------------------------------

def test_still_serves_after_bad_requests(daemon, api, check_classify, audio, classified):
    """Every malformed request again, back to back, then a good one."""
    for case in BAD:
        send_bad(daemon, api, audio, case)
    check_raw_413(api, *too_large_with_length(daemon.port))
    check_raw_413(api, *too_large_chunked(daemon.port))
    assert daemon.alive()
    ans = expect_answer(api, check_classify,
                        post_audio(daemon, audio.excerpt_mp3.read_bytes(), "audio/mpeg"))
    assert ans["genres"] == classified("excerpt_mp3")["genres"]
    assert expect_json(api, daemon.request("GET", "/readyz"), 200) == {"status": "ready"}
