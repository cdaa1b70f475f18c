"""test_valgrind.py - one integration run of the daemon under valgrind memcheck.

`genred serve` runs under `valgrind --error-exitcode=99 --leak-check=full
--errors-for-leak-kinds=definite` while it answers every route, good uploads
in each way they can come (raw, multipart, chunked, with ?segments=1&mel=1)
and a selection of hostile ones (test_hostile.py), including clients that
hang up mid-upload and before the answer. Then SIGTERM: the daemon must
exit 0, which under these flags means valgrind found no invalid read or
write, no use of uninitialised memory in a branch or syscall, no bad free
and no definitely lost block, in genred or in the libraries it drives.

Suppressions (tests/valgrind.supp) cover third-party noise only, each one
justified there. valgrind is ~20-50x slower than native, so the uploads are
short and one worker runs the model.

What it does not do: replace the ASan+UBSan run of the whole suite (.ci/run)
or fuzzing (fuzz/run), which see far more inputs.
"""
import re
import shutil
import stat

import pytest

import conftest
import test_hostile as th

VALGRIND_START_S = 300   # model load and FFTW planning under valgrind
VALGRIND_STOP_S = 300    # shutdown plus the leak check


@pytest.fixture
def valgrind_daemon(genred_bin, source_dir, model_path, tmp_path, monkeypatch):
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        pytest.fail("valgrind is not installed (.ci/install-deps test installs it)", pytrace=False)
    with open(genred_bin, "rb") as f:
        if b"__asan_init" in f.read():
            pytest.fail(f"{genred_bin} is built with AddressSanitizer, which valgrind cannot "
                        f"run; use the plain build", pytrace=False)
    log = tmp_path / "valgrind.log"
    supp = source_dir / "tests" / "valgrind.supp"
    # conftest's Daemon runs `BINARY serve --flags`; this wrapper is BINARY.
    wrapper = tmp_path / "genred-under-valgrind"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"exec '{valgrind}' --error-exitcode=99 --leak-check=full "
        "--errors-for-leak-kinds=definite --show-leak-kinds=definite "
        "--track-fds=no --num-callers=30 "
        f"--suppressions='{supp}' --log-file='{log}' '{genred_bin}' \"$@\"\n")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(conftest, "START_TIMEOUT_S", VALGRIND_START_S)
    monkeypatch.setattr(conftest, "STOP_TIMEOUT_S", VALGRIND_STOP_S)
    flags = conftest._base_flags(source_dir, model_path)
    flags.update({"workers": "1", "max-batch": "4", "max-upload-bytes": "8M",
                  "idle-timeout-s": "120", "request-timeout-s": "600"})
    d = conftest.Daemon(wrapper, flags, tmp_path / "stderr.log")
    d.valgrind_log = log
    return d


def valgrind_summary(log):
    text = log.read_text("utf-8", "replace") if log.exists() else ""
    m = re.search(r"ERROR SUMMARY: (\d+) errors", text)
    return text, (int(m.group(1)) if m else None)


def test_daemon_under_valgrind_has_no_errors(valgrind_daemon, api, check_classify, audio):
    d = valgrind_daemon
    inp = th.Inputs(audio)
    cc = check_classify
    timeout = 300
    try:
        # Every route.
        for path in api.paths("get"):
            r = d.request("GET", path, timeout=timeout)
            assert r.status_code == 200, (path, r.status_code, r.text[:300])
        assert d.request("GET", "/nope", timeout=timeout).status_code == 404
        assert d.request("DELETE", "/v1/model", timeout=timeout).status_code == 405

        # Good uploads: a real 30 s MP3 (44.1 kHz stereo: resampled, downmixed),
        # a tone as WAV raw, multipart and chunked, with every query flag.
        th.check_answer(api, cc, *th.post(d, inp.mp3, "audio/mpeg", timeout=timeout),
                        chunks=10)
        r = d.request("POST", th.CLASSIFY + "?trim=0&segments=1&mel=1", data=inp.tone,
                      headers={"Content-Type": "audio/wav"}, timeout=timeout)
        ans = th.check_answer(api, cc, r.status_code, r.headers, r.content, chunks=1)
        assert "segments" in ans and "mel" in ans
        th.check_answer(api, cc, *th.post(d, None, files={"file": ("t.wav", inp.tone, "audio/wav")},
                                          timeout=timeout), chunks=1)
        (r,) = th.exchange(d.port, th.request_bytes(d.port, th.chunked(inp.tone), "audio/wav",
                                                   b"Transfer-Encoding: chunked\r\n",
                                                   length=False), timeout=timeout)
        th.check_answer(api, cc, *r, chunks=1)

        # Hostile ones: each path that refuses input, plus hang-ups.
        for name in ("empty-body", "random-bytes", "png-named-mp3", "mp3-truncated-to-2k",
                     "wav-truncated-midstream", "wav-list-chunk-claiming-4gb",
                     "wav-extradata-cut-short", "wav-zero-channels", "wav-zero-sample-rate",
                     "id3-tag-without-audio", "m3u-playlist", "multipart-without-boundary",
                     "multipart-with-two-file-parts", "multipart-without-closing-boundary",
                     "huge-header-line", "expect-100-continue-too-large", "http-1-0",
                     "client-gone-mid-upload", "client-gone-before-the-answer"):
            th.CASES[name](d, api, cc, inp)
        th.good_upload_works(d, api, cc, inp)
        assert d.alive(), d.log_tail()
    finally:
        rc = d.stop()
        text, errors = valgrind_summary(d.valgrind_log)
        lost = re.search(r"definitely lost: ([\d,]+ bytes in [\d,]+ blocks)", text)
        print(f"\nvalgrind: exit status {rc}, ERROR SUMMARY: {errors} errors, definitely lost: "
              f"{lost.group(1) if lost else '0 bytes (no leak summary: nothing allocated was lost)'}")
    assert rc == 0 and errors == 0, (
        f"valgrind: exit status {rc} (99 = errors found), {errors} errors\n{text[-8000:]}")
