"""test_contract.py - every response openapi.yaml documents, from a real daemon.

Driven by the document, not by a list of its own: for each (route, method,
status) in openapi.yaml there must be a recipe here that makes the real
daemon answer it, and that answer is checked against exactly what the
document says of that response: its media type, its body schema, every
header it documents (required ones present, values valid against their
schemas). A status documented without a recipe fails, so the document and
the daemon cannot drift apart silently; only statuses that no request can
provoke on purpose are exempt, each with its reason. The GET routes are
also asked with HEAD: same status and headers, no body.

The 503 recipes are deterministic: a daemon with one classification slot
and a queue of one is kept busy by two long songs with trim=0, during which
/readyz and a third upload must be refused.

What it does not do: check answers beyond their schemas (test_api.py) or
the document on its own (test_openapi.py).
"""
import concurrent.futures
import http.client
import json
import re
import socket
import time

import pytest
import requests

METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
CLASSIFY = "/v1/classify"

# Documented, but no request can provoke them on purpose.
UNPROVOKABLE = {
    "500": "a bug or an exhausted resource (e.g. out of memory), never a reaction to input",
}


def deref(api, node):
    while isinstance(node, dict) and "$ref" in node:
        _, node = api.resolver.resolve(node["$ref"])
    return node


def documented(api):
    out = []
    for route, item in api.doc["paths"].items():
        for method, op in item.items():
            if method in METHODS:
                for status, resp in op["responses"].items():
                    out.append((route, method, str(status), deref(api, resp)))
    return out


# --- recipes: (daemon, audio) -> requests.Response ------------------------------

def post(d, body, ctype="audio/mpeg", params=None, timeout=120):
    return d.request("POST", CLASSIFY, data=body, params=params,
                     headers={"Content-Type": ctype}, timeout=timeout)


def get(path):
    return lambda d, audio: d.request("GET", path)


class Answer:
    """The parts of a requests.Response the checks use, for http.client."""

    def __init__(self, resp):
        self.status_code = resp.status
        self.headers = requests.structures.CaseInsensitiveDict(resp.getheaders())
        self.content = resp.read()
        self.text = self.content.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.content)


def too_large(d, audio):
    """Content-Length over the daemons' 8M limit and no body: the answer
    comes from the headers alone (test_api.py covers streamed and chunked
    uploads). Sending the body instead would race the daemon's early close."""
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=30)
    try:
        conn.putrequest("POST", CLASSIFY)
        conn.putheader("Content-Type", "audio/wav")
        conn.putheader("Content-Length", str(8 * 1024 * 1024 + 1))
        conn.endheaders()
        return Answer(conn.getresponse())
    finally:
        conn.close()


class RawAnswer(Answer):
    """An answer read off a raw socket: the checks' view of it."""

    def __init__(self, data):
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status_code = int(lines[0].split()[1])
        self.headers = requests.structures.CaseInsensitiveDict(
            (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:]))
        self.content = body[:int(self.headers.get("Content-Length", len(body)))]
        self.text = self.content.decode("utf-8", "replace")


def raw_exchange(d, head, trickle_s=None):
    """Sends head on a raw socket, then (with trickle_s) one body byte every
    trickle_s seconds, until the server answers and closes."""
    with socket.create_connection(("127.0.0.1", d.port), timeout=30) as s:
        s.sendall(head)
        data = b""
        s.settimeout(trickle_s or 30)
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                s.sendall(b"\0")
                continue
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
        return RawAnswer(data)


def too_slow(d, audio):
    """An upload of one byte a second: 408 once 10 s have passed."""
    return raw_exchange(d, f"POST {CLASSIFY} HTTP/1.1\r\nHost: x\r\nContent-Type: audio/mpeg\r\n"
                           f"Content-Length: 100000\r\n\r\n".encode(), trickle_s=1.0)


def query_too_long(d, audio):
    query = "&".join(f"p{i}=1" for i in range(40))
    return raw_exchange(d, f"POST {CLASSIFY}?{query} HTTP/1.1\r\nHost: x\r\n"
                           "Content-Type: audio/mpeg\r\nContent-Length: 0\r\n\r\n".encode())


def coding_unknown(d, audio):
    return raw_exchange(d, f"POST {CLASSIFY} HTTP/1.1\r\nHost: x\r\nContent-Type: audio/mpeg\r\n"
                           "Transfer-Encoding: gzip\r\n\r\nabc".encode())


RECIPES = {
    (CLASSIFY, "post", "200"): lambda d, a: post(d, a.excerpt_mp3.read_bytes()),
    (CLASSIFY, "post", "400"): lambda d, a: post(d, b"", "audio/wav"),
    (CLASSIFY, "post", "408"): too_slow,
    (CLASSIFY, "post", "413"): too_large,
    (CLASSIFY, "post", "414"): query_too_long,
    (CLASSIFY, "post", "501"): coding_unknown,
    (CLASSIFY, "post", "415"): lambda d, a: post(d, b"plain text, not audio\n" * 64),
    (CLASSIFY, "post", "422"): lambda d, a: post(d, a.short_wav.read_bytes(), "audio/wav"),
    ("/healthz", "get", "200"): get("/healthz"),
    ("/readyz", "get", "200"): get("/readyz"),
    ("/v1/model", "get", "200"): get("/v1/model"),
    ("/metrics", "get", "200"): get("/metrics"),
    ("/openapi.yaml", "get", "200"): get("/openapi.yaml"),
    ("/", "get", "200"): get("/"),
    ("/app.js", "get", "200"): get("/app.js"),
    ("/style.css", "get", "200"): get("/style.css"),
}
# Recipes that need the busy daemon (see busy_answers).
BUSY = {(CLASSIFY, "post", "503"), ("/readyz", "get", "503")}


def by_keyed_daemon(route, method, status):
    """Every 401 comes from a daemon with API keys asked without a key
    (keyed_answers)."""
    return status == "401"


def by_crowded_daemon(route, method, status):
    """The other 503s come from a daemon whose connections are all taken
    (crowded_answers)."""
    return status == "503" and (route, method, status) not in BUSY


def load_gauge(d, name):
    m = re.search(rf"^{name} (\d+)$", d.request("GET", "/metrics", timeout=10).text,
                  flags=re.M)
    return int(m.group(1)) if m else 0


def busy_answers(start_daemon, audio):
    """{(route, method, "503"): response} from a daemon with one
    classification slot, held by a 3-minute song analysed untrimmed one
    chunk per forward pass, and a queue of one, taken by a second song:
    /readyz and a third upload must be refused. Up to five rounds, in case
    a round's songs finish first."""
    d = start_daemon({"workers": 1, "max-active-requests": 1, "queue-capacity": 1,
                      "max-batch": 1})
    song, short = audio.song_mp3.read_bytes(), audio.excerpt_mp3.read_bytes()
    found = {}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for _round in range(5):
            holder = pool.submit(post, d, song, "audio/mpeg", {"trim": "0"})
            while load_gauge(d, "genred_active_requests") < 1 and not holder.done():
                time.sleep(0.005)
            waiter = pool.submit(post, d, song, "audio/mpeg", {"trim": "0"})
            deadline = time.monotonic() + 60
            while not holder.done() and time.monotonic() < deadline:
                if load_gauge(d, "genred_queue_depth") >= 1:
                    r = d.request("GET", "/readyz", timeout=10)
                    if r.status_code == 503:
                        found.setdefault(("/readyz", "get", "503"), r)
                        other = post(d, short)
                        if other.status_code == 503:
                            found.setdefault((CLASSIFY, "post", "503"), other)
                    break
                time.sleep(0.005)
            assert holder.result(timeout=120).status_code == 200
            assert waiter.result(timeout=120).status_code == 200
            if len(found) == 2:
                break
    return found


# --- checks -------------------------------------------------------------------

def media_type(value):
    return (value or "").split(";")[0].strip().lower()


def check_response(api, r, route, method, status, spec):
    assert str(r.status_code) == status, f"{method.upper()} {route}: {r.status_code}, " \
                                         f"want {status}: {r.text[:300]}"
    content = spec.get("content", {})
    if content:
        (mtype, media), = content.items()
        assert media_type(r.headers.get("Content-Type")) == mtype, r.headers
        schema = media.get("schema", {})
        if mtype == "application/json":
            api.validate(r.json(), schema)
        else:
            api.validate(r.text, schema)
    for name, header in spec.get("headers", {}).items():
        header = deref(api, header)
        value = r.headers.get(name)
        if header.get("required"):
            assert value is not None, f"{method.upper()} {route} {status}: no {name} header"
        if value is not None and "schema" in header:
            schema = deref(api, header["schema"])
            typed = int(value) if schema.get("type") == "integer" and value.isdigit() else value
            api.validate(typed, header["schema"])


def test_every_documented_response_has_a_recipe(api):
    missing = [(route, method, status) for route, method, status, _ in documented(api)
               if (route, method, status) not in RECIPES and (route, method, status) not in BUSY
               and not by_keyed_daemon(route, method, status)
               and not by_crowded_daemon(route, method, status)
               and status not in UNPROVOKABLE]
    assert not missing, f"openapi.yaml documents responses tests/test_contract.py cannot " \
                        f"provoke (add a recipe): {missing}"
    stale = set(RECIPES) | BUSY
    stale -= {(route, method, status) for route, method, status, _ in documented(api)}
    assert not stale, f"recipes for responses openapi.yaml does not document: {sorted(stale)}"


@pytest.fixture(scope="module")
def spec(api):
    return {(route, method, status): s for route, method, status, s in documented(api)}


@pytest.mark.parametrize("key", sorted(RECIPES), ids=lambda k: f"{k[1]}-{k[0]}-{k[2]}")
def test_documented_response(daemon, api, audio, spec, key):
    if key not in spec:
        pytest.fail(f"{key} is no longer documented; remove its recipe", pytrace=False)
    r = RECIPES[key](daemon, audio)
    check_response(api, r, *key, spec[key])
    route, method, status = key
    if route == "/openapi.yaml":
        assert r.content == api.raw
    if route == "/metrics":
        assert re.search(r"^# TYPE genred_requests_total counter$", r.text, flags=re.M)


def test_documented_busy_responses(start_daemon, api, audio, spec):
    found = busy_answers(start_daemon, audio)
    for key in sorted(BUSY):
        if key not in spec:
            pytest.fail(f"{key} is no longer documented; remove it from BUSY", pytrace=False)
        assert key in found, f"the busy daemon never answered {key}: got {sorted(found)}"
        check_response(api, found[key], *key, spec[key])


def test_head_mirrors_get(daemon, api):
    for route in api.paths("get"):
        g = daemon.request("GET", route)
        h = daemon.request("HEAD", route)
        assert h.status_code == g.status_code == 200, route
        assert h.content == b"", route
        assert media_type(h.headers.get("Content-Type")) == media_type(
            g.headers.get("Content-Type")), route
        assert h.headers.get("X-Request-Id"), route


def keyed_answers(start_daemon, api, tmp_path):
    """{(route, method, "401"): response} from a daemon with API keys, each
    documented 401 asked for without a key (a POST without a body: the key
    is checked before anything else)."""
    keys = tmp_path / "keys"
    keys.write_text("contract-test-key-0123456789\n")
    d = start_daemon({"api-keys-file": keys})
    return {(route, method, status): d.request(method.upper(), route, timeout=30)
            for route, method, status, _ in documented(api)
            if by_keyed_daemon(route, method, status)}


def crowded_answers(start_daemon, api):
    """{(route, method, "503"): response} from a daemon with max_connections
    1, held by a keep-alive connection that has had its answer: every route
    but the health probes must refuse at once."""
    d = start_daemon({"max-connections": 1, "idle-timeout-s": 60})
    holder = http.client.HTTPConnection("127.0.0.1", d.port, timeout=30)
    try:
        holder.request("GET", "/healthz")
        assert Answer(holder.getresponse()).status_code == 200
        return {(route, method, status): d.request(method.upper(), route, timeout=30)
                for route, method, status, _ in documented(api)
                if by_crowded_daemon(route, method, status)}
    finally:
        holder.close()


def test_documented_unauthorized_responses(start_daemon, api, spec, tmp_path):
    found = keyed_answers(start_daemon, api, tmp_path)
    assert found, "openapi.yaml documents no 401"
    for key, r in sorted(found.items()):
        check_response(api, r, *key, spec[key])


def test_documented_crowded_responses(start_daemon, api, spec):
    found = crowded_answers(start_daemon, api)
    assert found, "openapi.yaml documents no 503 beyond the busy queue"
    for key, r in sorted(found.items()):
        check_response(api, r, *key, spec[key])
