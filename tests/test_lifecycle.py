"""test_lifecycle.py - the daemon's limits, lifecycle and access, end to end.

Each test starts its own `genred serve` (conftest's start_daemon) with the
settings it needs and drives it with real clients:

- logs: every request is one JSON line with its id, route, status, bytes and
  duration (and the top genre for a classification); X-Request-Id is echoed.
- SIGTERM: new connections are refused at once; requests in flight finish
  with 200 and the process exits 0; requests still running after
  shutdown_timeout_s are cancelled with 503 and the process still exits 0.
- SIGHUP: a new model file is swapped in (GET /v1/model and /metrics show
  it) while a request in flight is answered by the old model; a corrupt file
  is refused with a log line and the old model keeps serving; readiness
  stays 200 throughout.
- request_timeout_s: a request past its deadline gets 503 deadline_exceeded
  with Retry-After, quickly, and the daemon goes on serving.
- API keys: 401 without a key or with a wrong one (WWW-Authenticate:
  Bearer), 200 with a right one, health routes exempt, keys reloaded on
  SIGHUP, and no key ever in the log.
- TLS: a self-signed certificate made here with openssl; HTTPS serves,
  plain HTTP on that port gets no answer; bad TLS settings refuse the start.
- slow clients: a client stalled in its headers or its body is dropped after
  idle_timeout_s while others are served.
- overload: connections beyond max_connections are closed at once; a flood
  of classifications beyond max_active_requests plus queue_capacity gets 503
  + Retry-After while /healthz keeps answering fast.

Every wait is bounded. Long requests are the 10-minute WAV of conftest's
`audio` with trim=0 on one worker with batches of one chunk: ~200 forward
passes, about a second of inference here.
"""
import concurrent.futures
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import requests

WAIT_S = 30.0  # upper bound for anything that should happen "soon"


# --- helpers -------------------------------------------------------------------

def wait_for(what, predicate, timeout=WAIT_S, interval=0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}", pytrace=False)
        time.sleep(interval)


def log_events(d):
    """The daemon's stderr as parsed JSON lines (every line must be JSON)."""
    events = []
    for line in d.log_path.read_text("utf-8", "replace").splitlines():
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except ValueError:
            pytest.fail(f"log line is not JSON: {line!r}", pytrace=False)
    return events


def queue_depth(d):
    """Classifications waiting for the model (admitted, past decoding)."""
    text = d.request("GET", "/metrics", timeout=10).text
    m = re.search(r"^genred_inference_queue_depth (\d+)$", text, flags=re.M)
    return int(m.group(1)) if m else 0


def post_audio(d, body, query="", timeout=120, headers=None, **kw):
    h = {"Content-Type": "application/octet-stream"}
    h.update(headers or {})
    return d.request("POST", "/v1/classify" + query, data=body, headers=h, timeout=timeout, **kw)


class Call(threading.Thread):
    """One request on its own thread; .response or .error, and when it ended."""

    def __init__(self, fn):
        super().__init__(daemon=True)
        self.fn, self.response, self.error, self.done_at = fn, None, None, None
        self.start()

    def run(self):
        try:
            self.response = self.fn()
        except requests.RequestException as e:
            self.error = e
        self.done_at = time.monotonic()

    def result(self, timeout=120):
        self.join(timeout)
        assert not self.is_alive(), "request did not finish"
        return self.response


def wait_exit(d, timeout):
    try:
        return d.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"genred did not exit within {timeout} s\n{d.log_tail()}", pytrace=False)


def connect_refused(port):
    # A reset is a refusal too: a connection that reached the backlog just as
    # the listening socket closed is reset by the kernel.
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except (ConnectionRefusedError, ConnectionResetError):
        return True


def closed_by_server(sock, timeout):
    """True when the server closes sock (EOF or reset) within timeout,
    without sending anything first."""
    sock.settimeout(timeout)
    try:
        data = sock.recv(4096)
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False
    assert data == b"", f"server answered instead of closing: {data[:200]!r}"
    return True


LONG = {"workers": 1, "max-batch": 1, "max-upload-bytes": "64M"}


@pytest.fixture(scope="module")
def long_body(audio):
    return audio.long_wav.read_bytes()


@pytest.fixture(scope="module")
def excerpt(audio):
    return audio.excerpt_mp3.read_bytes()


# --- request logs --------------------------------------------------------------

def test_request_log_lines(start_daemon, excerpt):
    d = start_daemon({})
    r = post_audio(d, excerpt, headers={"X-Request-Id": "log-test-1"})
    assert r.status_code == 200
    assert r.headers["X-Request-Id"] == "log-test-1"
    assert d.request("GET", "/nope").status_code == 404
    wait_for("two request log lines",
             lambda: len([e for e in log_events(d) if e.get("event") == "request"]) >= 2)
    lines = [e for e in log_events(d) if e.get("event") == "request"]
    for e in lines:
        assert {"request_id", "route", "status", "bytes_in", "bytes_out", "duration_ms"} <= set(e)
        assert e["duration_ms"] >= 0
    classify = [e for e in lines if e["request_id"] == "log-test-1"]
    assert len(classify) == 1, lines
    c = classify[0]
    assert (c["route"], c["status"], c["bytes_in"]) == ("/v1/classify", 200, len(excerpt))
    assert c["top"] == r.json()["top"]
    assert c["bytes_out"] == len(r.content)
    assert any(e["route"] == "other" and e["status"] == 404 for e in lines)


# --- SIGTERM -------------------------------------------------------------------

def test_sigterm_finishes_requests_in_flight(start_daemon, long_body):
    # A timeout no build reaches (sanitizer builds are ~20x slower): the
    # requests must finish, not be cancelled.
    d = start_daemon({**LONG, "shutdown-timeout-s": 300})
    calls = [Call(lambda: post_audio(d, long_body, "?trim=0")) for _ in range(2)]
    wait_for("a request in inference", lambda: queue_depth(d) >= 1)
    t_term = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    # New connections are refused at once, while the requests still run.
    wait_for("new connections refused", lambda: connect_refused(d.port), timeout=5)
    assert any(c.is_alive() for c in calls), "requests ended before the check"
    rc = wait_exit(d, 300)
    t_exit = time.monotonic()
    for c in calls:
        r = c.result()
        assert c.error is None, c.error
        assert r.status_code == 200, r.text
        assert r.json()["chunks"] == 200
        assert r.headers.get("Connection", "").lower() == "close"
        assert c.done_at > t_term
    assert rc == 0, d.log_tail()
    # It exits as soon as they are answered, not at the timeout.
    assert t_exit - max(c.done_at for c in calls) < 5
    stopped = [e for e in log_events(d) if e.get("event") == "stopped"]
    assert stopped and stopped[0]["requests_cancelled"] == 0


def test_sigterm_cancels_what_outlives_the_shutdown_timeout(start_daemon, long_body):
    d = start_daemon({**LONG, "shutdown-timeout-s": 0.5})
    calls = [Call(lambda: post_audio(d, long_body, "?trim=0")) for _ in range(4)]
    wait_for("requests waiting for inference", lambda: queue_depth(d) >= 2)
    t_term = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    rc = wait_exit(d, 20)
    took = time.monotonic() - t_term
    assert rc == 0, d.log_tail()
    # 0.5 s of waiting, then cancelled work stops within a stage (decode of
    # 10 minutes of WAV at most) and the 503s go out.
    assert took < 0.5 + 5, f"exit {took:.1f} s after SIGTERM"
    statuses = []
    for c in calls:
        r = c.result()
        if r is None:  # cut while its upload or answer was on the wire
            statuses.append(None)
            continue
        statuses.append(r.status_code)
        if r.status_code == 503:
            assert r.json()["error"]["code"] == "busy", r.text
            assert r.headers["Retry-After"]
    assert 503 in statuses, statuses
    assert set(statuses) <= {200, 503, None}, statuses
    stopped = [e for e in log_events(d) if e.get("event") == "stopped"]
    assert stopped and stopped[0]["requests_cancelled"] >= 1, stopped


# --- SIGHUP --------------------------------------------------------------------

NEW_VERSION = "2.0.0-reload-test"


@pytest.fixture(scope="module")
def new_model(source_dir, model_path, tmp_path_factory):
    """The bundled model saved again under another version string, with
    train/gmodel.py (load, then save)."""
    sys.path.insert(0, str(source_dir / "train"))
    try:
        import gmodel
    finally:
        sys.path.pop(0)
    module, h = gmodel.load(str(model_path))
    out = tmp_path_factory.mktemp("models") / "v2.gmodel"
    gmodel.save(str(out), module, h["genres"], h["features"], h["name"], NEW_VERSION,
                h.get("description", ""), h.get("training", {}))
    return out


def model_version(d):
    return d.request("GET", "/v1/model", timeout=10).json()["version"]


def test_sighup_swaps_the_model_and_refuses_a_corrupt_one(start_daemon, model_path, new_model,
                                                           long_body, excerpt, tmp_path):
    live = tmp_path / "live.gmodel"
    shutil.copyfile(model_path, live)
    d = start_daemon({**LONG, "model": live})
    old = model_version(d)
    assert old != NEW_VERSION

    ready = {"codes": set(), "stop": False}

    def probe_ready():
        while not ready["stop"]:
            ready["codes"].add(d.request("GET", "/readyz", timeout=10).status_code)
            time.sleep(0.02)

    prober = threading.Thread(target=probe_ready, daemon=True)
    prober.start()

    inflight = Call(lambda: post_audio(d, long_body, "?trim=0"))
    wait_for("a request in inference", lambda: queue_depth(d) >= 1)
    os.replace(shutil.copyfile(new_model, tmp_path / "staged.gmodel"), live)
    t_hup = time.monotonic()
    d.proc.send_signal(signal.SIGHUP)
    wait_for("the new model", lambda: model_version(d) == NEW_VERSION)

    r = inflight.result()
    assert r.status_code == 200, r.text
    assert inflight.done_at > t_hup
    assert r.json()["model"]["version"] == old, "the request in flight changed model"
    after = post_audio(d, excerpt)
    assert after.status_code == 200
    assert after.json()["model"]["version"] == NEW_VERSION
    metrics = d.request("GET", "/metrics").text
    assert f'version="{NEW_VERSION}"' in metrics
    # Counters keep what the replaced model served.
    assert re.search(r"^genred_chunks_total (\d+)$", metrics, re.M).group(1) == str(200 + 10)

    # A corrupt file (one flipped byte: CRC mismatch) is refused.
    blob = bytearray(new_model.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (tmp_path / "bad.gmodel").write_bytes(bytes(blob))
    os.replace(tmp_path / "bad.gmodel", live)
    d.proc.send_signal(signal.SIGHUP)
    refused = wait_for("the refusal in the log", lambda: [
        e for e in log_events(d)
        if e.get("event") == "reload" and e.get("status") == "refused"])
    assert refused[0]["what"] == "model" and "CRC" in refused[0]["error"], refused
    assert model_version(d) == NEW_VERSION
    again = post_audio(d, excerpt)
    assert again.status_code == 200
    assert again.json()["model"]["version"] == NEW_VERSION

    ready["stop"] = True
    prober.join(timeout=15)
    assert ready["codes"] == {200}, ready["codes"]
    ok = [e for e in log_events(d) if e.get("event") == "reload" and e.get("status") == "ok"]
    assert len(ok) == 1 and ok[0]["version"] == NEW_VERSION, ok


# --- request deadline ------------------------------------------------------------

def test_request_deadline(start_daemon, long_body, excerpt):
    """10 minutes of audio need ~200 forward passes of one chunk plus decode
    and features: far more than 0.1 s on any machine."""
    d = start_daemon({**LONG, "request-timeout-s": 0.1})
    t0 = time.monotonic()
    r = post_audio(d, long_body, "?trim=0")
    took = time.monotonic() - t0
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "deadline_exceeded"
    assert int(r.headers["Retry-After"]) >= 1
    assert took < 5, f"answered after {took:.1f} s"
    assert d.request("GET", "/healthz").status_code == 200
    assert d.request("GET", "/readyz").status_code == 200


# --- API keys ----------------------------------------------------------------------

KEY_1 = "k1-Qm9vdGggd2FzIGhlcmU"
KEY_2 = "k2-b3RoZXIga2V5IGhlcmU"
KEY_3 = "k3-dGhpcmQga2V5IGF0IGxhc3Q"


def test_api_keys(start_daemon, api, excerpt, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text(f"# test keys\n{KEY_1}\n\n  {KEY_2}  \n")
    d = start_daemon({"api-keys-file": keys})

    def get(path, key=None, scheme="Bearer"):
        h = {"Authorization": f"{scheme} {key}"} if key else {}
        return d.request("GET", path, headers=h, timeout=30)

    r = post_audio(d, excerpt)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthorized"
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="genred"'
    assert r.headers["X-Request-Id"]
    r = post_audio(d, excerpt, headers={"Authorization": "Bearer wrong-key-0123456789"})
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="genred", error="invalid_token"'
    assert get("/v1/model", KEY_1, scheme="Basic").status_code == 401
    for path in api.paths("get", public=False):
        assert get(path).status_code == 401, path
    # The probes and the public documents (web page, API contract) need none.
    for path in api.paths("get", public=True):
        assert get(path).status_code == 200, path
    r = post_audio(d, excerpt, headers={"Authorization": f"Bearer {KEY_2}"})
    assert r.status_code == 200, r.text
    assert get("/v1/model", KEY_1).status_code == 200

    # SIGHUP reads the file again: KEY_1 out, KEY_3 in.
    keys.write_text(f"{KEY_2}\n{KEY_3}\n")
    d.proc.send_signal(signal.SIGHUP)
    wait_for("the new keys", lambda: get("/v1/model", KEY_3).status_code == 200)
    assert get("/v1/model", KEY_1).status_code == 401
    # A file with no key is refused; the keys in force stay.
    keys.write_text("# nothing\n")
    d.proc.send_signal(signal.SIGHUP)
    wait_for("the refusal in the log", lambda: [
        e for e in log_events(d)
        if e.get("what") == "api_keys" and e.get("status") == "refused"])
    assert get("/v1/model", KEY_3).status_code == 200

    log = d.log_path.read_text("utf-8", "replace")
    for k in (KEY_1, KEY_2, KEY_3, "wrong-key-0123456789"):
        assert k not in log
    # The 401s are logged like any request.
    assert any(e.get("status") == 401 for e in log_events(d))


def test_api_keys_file_that_does_not_load_refuses_the_start(genred_bin, model_path, tmp_path):
    bad = tmp_path / "keys"
    bad.write_text("short\n")
    run = subprocess.run([str(genred_bin), "serve", "--port", "0", "--model", str(model_path),
                          "--api-keys-file", str(bad)], capture_output=True, timeout=60,
                         env={k: v for k, v in os.environ.items() if not k.startswith("GENRED_")})
    assert run.returncode == 1
    assert b":1: a key must be 16 to 256 characters long" in run.stderr
    assert b"short" not in run.stderr.replace(str(bad).encode(), b"")


# --- TLS -------------------------------------------------------------------------

def test_tls(start_daemon, tls_files, excerpt):
    cert, key = tls_files
    d = start_daemon({"tls-cert-file": cert, "tls-key-file": key, "ops-port": 0})
    assert d.url.startswith("https://") and d.ops_url.startswith("https://")
    r = d.request("GET", "/healthz", verify=str(cert))
    assert r.status_code == 200
    assert d.request("GET", "/readyz", ops=True, verify=str(cert)).status_code == 200
    # Answers genred writes to the socket itself go through TLS too.
    r = d.request("GET", "/healthz?" + "&".join(["a=1"] * 40), verify=str(cert))
    assert r.status_code == 414 and r.json()["error"]["code"] == "uri_too_long", r.text
    r = post_audio(d, excerpt, verify=str(cert))
    assert r.status_code == 200, r.text
    assert r.json()["chunks"] == 10
    # Without trusting the certificate the client refuses it...
    with pytest.raises(requests.exceptions.SSLError):
        d.request("GET", "/healthz")
    # ...and plain HTTP on the HTTPS port gets no HTTP answer.
    with socket.create_connection(("127.0.0.1", d.port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(5)
        try:
            data = s.recv(4096)
        except (ConnectionResetError, socket.timeout):
            data = b""
        assert not data.startswith(b"HTTP/1.1 200"), data


@pytest.mark.parametrize("flags, rc, message", [
    ({"tls-cert-file": "CERT"}, 2, b"tls_cert_file and tls_key_file must be set together"),
    ({"tls-cert-file": "KEY", "tls-key-file": "KEY"}, 1, b"has no PEM block"),
    ({"tls-cert-file": "CERT", "tls-key-file": "CERT"}, 1, b"has no PEM block"),
    ({"tls-cert-file": "/nonexistent.pem", "tls-key-file": "KEY"}, 1, b"cannot open"),
], ids=["cert-without-key", "key-as-cert", "cert-as-key", "missing-file"])
def test_bad_tls_settings_refuse_the_start(genred_bin, model_path, tls_files, flags, rc, message):
    cert, key = tls_files
    argv = [str(genred_bin), "serve", "--port", "0", "--model", str(model_path)]
    for k, v in flags.items():
        argv += [f"--{k}", {"CERT": str(cert), "KEY": str(key)}.get(v, v)]
    run = subprocess.run(argv, capture_output=True, timeout=60,
                         env={k: v for k, v in os.environ.items() if not k.startswith("GENRED_")})
    assert run.returncode == rc, run.stderr
    assert message in run.stderr
    assert b"PRIVATE KEY" not in run.stderr


# --- the ops listener -------------------------------------------------------------

def test_ops_listener_serves_the_probes_and_metrics_only(start_daemon, long_body, tmp_path):
    """ops_port: /healthz, /readyz and /metrics, with the same API keys as
    the main port (the probes need none), everything else 404 there; during
    a shutdown it keeps answering (/readyz 503) while the main port refuses
    connections."""
    keys = tmp_path / "keys"
    keys.write_text("ops-listener-test-key-0123\n")
    auth = {"Authorization": "Bearer ops-listener-test-key-0123"}
    d = start_daemon({**LONG, "ops-port": 0, "api-keys-file": keys,
                      "shutdown-timeout-s": 60})
    assert d.ops_port and d.ops_port != d.port
    assert d.request("GET", "/healthz", ops=True).json() == {"status": "ok"}
    assert d.request("GET", "/readyz", ops=True).json() == {"status": "ready"}
    assert d.request("GET", "/metrics", ops=True).status_code == 401
    m = d.request("GET", "/metrics", ops=True, headers=auth)
    assert m.status_code == 200 and "genred_queue_capacity 64" in m.text
    for method, path in (("GET", "/v1/model"), ("GET", "/"), ("GET", "/openapi.yaml"),
                         ("POST", "/v1/classify")):
        r = d.request(method, path, ops=True, headers=auth, data=b"x" if method == "POST" else None)
        assert r.status_code == 404, (path, r.text)
        assert "ops port" in r.json()["error"]["message"]
    # A long classification in flight keeps the daemon draining after SIGTERM.
    call = Call(lambda: post_audio(d, long_body, "?trim=0", headers=auth))
    wait_for("a classification running",
             lambda: "genred_active_requests 1" in d.request(
                 "GET", "/metrics", ops=True, headers=auth).text)
    d.proc.send_signal(signal.SIGTERM)
    wait_for("new connections refused", lambda: connect_refused(d.port), timeout=5)
    r = d.request("GET", "/readyz", ops=True)
    assert r.status_code == 503 and "shutting down" in r.json()["error"]["message"], r.text
    assert d.request("GET", "/healthz", ops=True).status_code == 200
    assert call.result().status_code == 200
    assert wait_exit(d, 60) == 0


# --- slow clients and overload ---------------------------------------------------------

def test_stalled_clients_are_dropped_after_idle_timeout(start_daemon, excerpt):
    d = start_daemon({"idle-timeout-s": 1})
    half_headers = socket.create_connection(("127.0.0.1", d.port), timeout=5)
    half_headers.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: au")
    half_body = socket.create_connection(("127.0.0.1", d.port), timeout=5)
    half_body.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      b"Content-Type: audio/mpeg\r\nContent-Length: 1000000\r\n\r\n" +
                      excerpt[:20000])
    t0 = time.monotonic()
    # Others are served meanwhile.
    assert d.request("GET", "/healthz", timeout=5).status_code == 200
    assert post_audio(d, excerpt, timeout=30).status_code == 200
    for s in (half_headers, half_body):
        with s:
            assert closed_by_server(s, timeout=10), "stalled client was never dropped"
    took = time.monotonic() - t0
    assert took < 1 + 5, f"dropped after {took:.1f} s"


def held_connection(port):
    """A keep-alive connection that has had its answer and stays open (until
    idle_timeout_s): once the answer is read, the daemon surely counts it."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    got = b""
    while not got.endswith(b'{"status":"ok"}'):
        chunk = s.recv(4096)
        assert chunk, f"connection closed after {got!r}"
        got += chunk
    assert got.startswith(b"HTTP/1.1 200"), got
    return s


def test_connections_beyond_the_limit(start_daemon):
    """max_connections=3, filled by idle keep-alive clients: other routes get
    503 at once, the health probes still answer (8 connections of headroom),
    and past the headroom new connections are closed at once. When the idle
    ones time out, everything serves again."""
    d = start_daemon({"max-connections": 3, "idle-timeout-s": 5})
    held = [held_connection(d.port) for _ in range(3)]
    t0 = time.monotonic()
    r = d.request("GET", "/v1/model", timeout=5)
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "busy"
    assert int(r.headers["Retry-After"]) >= 1
    assert r.headers["Connection"].lower() == "close"  # it must not keep a slot
    assert d.request("GET", "/healthz", timeout=5).status_code == 200
    assert d.request("GET", "/readyz", timeout=5).status_code == 200
    held += [held_connection(d.port) for _ in range(8)]
    extra = socket.create_connection(("127.0.0.1", d.port), timeout=5)
    with extra:
        extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert closed_by_server(extra, timeout=2), "connection beyond the headroom was kept"
    assert time.monotonic() - t0 < 5  # refused by the limits, not by the idle timeout
    for s in held:
        with s:
            assert closed_by_server(s, timeout=10)
    # The daemon counts a connection out when MHD reports it closed, a moment
    # after the client sees its end (longer under ASan): a bounded wait.
    deadline = time.monotonic() + 5
    while (status := d.request("GET", "/v1/model", timeout=5).status_code) == 503 \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status == 200


def test_overload_sheds_work_and_healthz_stays_responsive(start_daemon, long_body):
    # 2 running and 1 waiting, whatever the machine's cores: of 8, some are
    # refused.
    d = start_daemon({**LONG, "max-active-requests": 2, "queue-capacity": 1,
                      "max-connections": 64})
    stop = threading.Event()
    probes = []

    def probe():
        while not stop.is_set():
            t = time.monotonic()
            try:
                code = d.request("GET", "/healthz", timeout=5).status_code
            except requests.RequestException as e:
                code = repr(e)
            probes.append((code, time.monotonic() - t))
            time.sleep(0.05)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: post_audio(d, long_body, "?trim=0", timeout=120),
                                range(8)))
    stop.set()
    prober.join(timeout=15)
    codes = [r.status_code for r in answers]
    assert set(codes) <= {200, 503}, [(r.status_code, r.text[:200]) for r in answers]
    assert 200 in codes and 503 in codes, codes
    for r in answers:
        if r.status_code == 503:
            assert r.json()["error"]["code"] == "busy"
            assert int(r.headers["Retry-After"]) >= 1
    assert len(probes) >= 5
    bad = [p for p in probes if p[0] != 200]
    assert not bad, bad
    slowest = max(t for _, t in probes)
    assert slowest < 2.0, f"/healthz took {slowest:.2f} s under load"
