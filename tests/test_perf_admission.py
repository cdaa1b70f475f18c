"""test_perf_admission.py - admission to classification, and the memory of
uploads, under load.

A classification is admitted to one of max_active_requests slots only once
its upload has arrived whole; later ones wait in line, oldest first, up to
queue_capacity of them, and more get 503 at once (http.c admit()). Uploads
count against max_upload_memory from their first byte, as they grow, until
their answer: one that cannot fit gets 503. These tests hold the slot or the
memory with clients whose progress the test controls, so what happens to
the others depends on the order of events, not on how fast the machine is:

  - a waiting upload is admitted when the slot frees, after the one ahead
    of it, and is answered 200; while the slot and the line are taken,
    /readyz and a further upload get 503, /healthz and /v1/model do not wait;
  - an upload held half-sent keeps its bytes counted: with max_upload_memory
    taken, another upload gets 503 (by Content-Length at once, closed;
    chunked, at its end) and /readyz 503, until the first one is done.

That a slow upload never holds a slot is test_hostile.py's (issue 12,
finding 2). The peak memory this buys is measured by bench/
(docs/performance.md), not asserted here.
"""
import re
import socket
import threading
import time


CLASSIFY = "/v1/classify"


def gauge(d, name):
    text = d.request("GET", "/metrics", timeout=10).text
    m = re.search(rf"^{name} (\d+)$", text, flags=re.M)
    assert m, f"/metrics has no {name}"
    return int(m.group(1))


def wait_for(what, predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


class Post(threading.Thread):
    """POST /v1/classify on its own thread; .response and when it came."""

    def __init__(self, d, body, query=""):
        super().__init__(daemon=True)
        self.d, self.body, self.query = d, body, query
        self.response, self.done_at = None, None
        self.start()

    def run(self):
        self.response = self.d.request("POST", CLASSIFY + self.query, data=self.body,
                                       headers={"Content-Type": "audio/mpeg"}, timeout=120)
        self.done_at = time.monotonic()

    def result(self):
        self.join(120)
        assert not self.is_alive(), "request did not finish"
        return self.response


def test_waiting_upload_is_admitted_when_the_slot_frees(start_daemon, audio):
    """One slot, held by a 10-minute WAV analysed untrimmed one chunk per
    forward pass; a second upload waits (queue_depth 1) and is answered
    after the first; meanwhile the line is full: /readyz and a third upload
    get 503, the other routes answer at once."""
    d = start_daemon({"workers": 1, "max-batch": 1, "max-active-requests": 1,
                      "queue-capacity": 1, "max-upload-bytes": "32M",
                      "max-duration-s": 900})
    song, excerpt = audio.long_wav.read_bytes(), audio.excerpt_mp3.read_bytes()
    holder = Post(d, song, "?trim=0")
    wait_for("the slot taken", lambda: gauge(d, "genred_active_requests") == 1)
    waiter = Post(d, excerpt)
    wait_for("the upload waiting", lambda: gauge(d, "genred_queue_depth") == 1)
    assert holder.is_alive(), "the holder finished too soon for this test"

    t0 = time.monotonic()
    assert d.request("GET", "/healthz", timeout=10).status_code == 200
    assert d.request("GET", "/v1/model", timeout=10).status_code == 200
    ready = d.request("GET", "/readyz", timeout=10)
    assert ready.status_code == 503, ready.text
    assert "classification slot" in ready.json()["error"]["message"]
    third = d.request("POST", CLASSIFY, data=excerpt, headers={"Content-Type": "audio/mpeg"},
                      timeout=30)
    assert third.status_code == 503, third.text
    assert third.json()["error"]["code"] == "busy" and third.headers["Retry-After"]
    assert time.monotonic() - t0 < 5, "refusals and other routes must not wait for a slot"

    assert holder.result().status_code == 200
    r = waiter.result()
    assert r.status_code == 200, r.text
    assert waiter.done_at > holder.done_at  # it waited for the slot
    assert d.request("GET", "/readyz", timeout=10).status_code == 200


def half_sent_upload(port, total, sent):
    """A raw POST that promises `total` bytes and sends `sent` of them;
    returns the socket (the caller finishes or drops it)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(f"POST {CLASSIFY} HTTP/1.1\r\nHost: x\r\nContent-Type: audio/mpeg\r\n"
              f"Content-Length: {total}\r\nConnection: close\r\n\r\n".encode() + bytes(sent))
    return s


def read_status(sock):
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n", 1)[0].decode("latin-1")


def test_uploads_count_against_max_upload_memory_as_they_arrive(start_daemon, audio):
    """max_upload_memory = max_upload_bytes = 1 MiB: an upload that has sent
    700 KB of its 1 MiB holds the whole budget (its buffer doubled to its
    length). Another upload with a Content-Length is refused at once with
    Connection: close, a chunked one at its end, /readyz says 503; once the
    first is answered the budget is free again."""
    d = start_daemon({"max-upload-bytes": "1M", "max-upload-memory": "1M"})
    excerpt = audio.excerpt_mp3.read_bytes()[:300_000]
    first = half_sent_upload(d.port, 1 << 20, 700_000)
    try:
        wait_for("the first upload's bytes counted",
                 lambda: gauge(d, "genred_upload_memory_bytes") == 1 << 20)
        r = d.request("POST", CLASSIFY, data=excerpt, headers={"Content-Type": "audio/mpeg"},
                      timeout=30)
        assert r.status_code == 503, r.text
        assert "max_upload_memory" in r.json()["error"]["message"]
        assert r.headers["Connection"].lower() == "close" and r.headers["Retry-After"]
        r = d.request("POST", CLASSIFY, data=iter([excerpt]),  # chunked
                      headers={"Content-Type": "audio/mpeg"}, timeout=30)
        assert r.status_code == 503, r.text
        assert "max_upload_memory" in r.json()["error"]["message"]
        ready = d.request("GET", "/readyz", timeout=10)
        assert ready.status_code == 503 and "max_upload_memory" in ready.text, ready.text
        first.sendall(bytes((1 << 20) - 700_000))
        assert read_status(first).startswith("HTTP/1.1 415")  # zeros: not audio
    finally:
        first.close()
    wait_for("the budget given back", lambda: gauge(d, "genred_upload_memory_bytes") == 0)
    assert d.request("GET", "/readyz", timeout=10).status_code == 200
    r = d.request("POST", CLASSIFY, data=excerpt, headers={"Content-Type": "audio/mpeg"},
                  timeout=30)
    assert r.status_code == 200, r.text
