"""test_perf_admission.py - classify admission: the memory bound under load.

At most max_active_requests classify requests hold memory at once (upload,
features, workspaces); a later one waits before its body is read, so its
upload stays in the client's socket (TCP flow control), for at most
request_timeout_s, then gets 503 (http.c admit()). These tests hold the one
slot with a client that trickles its upload, so what happens to a second
request depends on the order of events, not on how fast the machine is:

  - the second request is answered only after the first upload finished,
    and is answered 200 even though it waited longer than idle_timeout_s
    (waiting for admission is not idleness);
  - with a short request_timeout_s it gets 503 + Retry-After instead, while
    health checks are answered all along, and the first request still
    completes.

The peak memory this buys is measured by bench/ (docs/performance.md), not
asserted here.
"""
import socket
import threading
import time

import requests

CLASSIFY = "/v1/classify"


def trickle_upload(port, body, pieces, pause_s):
    """POSTs body on a raw socket: headers and a first piece at once, then
    the rest in `pieces` parts `pause_s` apart. Returns (status line,
    time.monotonic() when the last byte was sent)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    try:
        head = (f"POST {CLASSIFY} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: audio/mpeg\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n").encode()
        first = len(body) // 4
        s.sendall(head + body[:first])
        rest = body[first:]
        step = (len(rest) + pieces - 1) // pieces
        for i in range(pieces):
            time.sleep(pause_s)
            s.sendall(rest[i * step:(i + 1) * step])
        sent = time.monotonic()
        reply = b""
        while b"\r\n" not in reply:
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
        return reply.split(b"\r\n", 1)[0].decode("latin-1"), sent
    finally:
        s.close()


def hold_the_slot(port, body, pieces, pause_s):
    """Starts trickle_upload() on a thread and gives it 0.3 s to be admitted
    and start uploading. Returns the thread and a dict that gets the
    upload's "status" and "sent" once it is done."""
    first = {}

    def holder():
        first["status"], first["sent"] = trickle_upload(port, body, pieces, pause_s)

    t = threading.Thread(target=holder)
    t.start()
    time.sleep(0.3)
    return t, first


def test_waiting_request_is_admitted_after_the_slot_frees(start_daemon, audio):
    body = audio.excerpt_mp3.read_bytes()
    d = start_daemon({"max-active-requests": 1, "idle-timeout-s": 1,
                      "request-timeout-s": 30})
    t, first = hold_the_slot(d.port, body, pieces=8, pause_s=0.3)
    r = requests.post(d.url + CLASSIFY, data=body, headers={"Content-Type": "audio/mpeg"},
                      timeout=60)
    answered = time.monotonic()
    t.join(60)
    assert first["status"].startswith("HTTP/1.1 200"), first
    assert r.status_code == 200, r.text
    # It waited for the slot: its answer came after the holder's last byte,
    # i.e. after more than idle_timeout_s (2.4 s of trickling > 1 s).
    assert answered > first["sent"]


def test_waiting_is_bounded_and_health_checks_never_wait(start_daemon, audio):
    body = audio.excerpt_mp3.read_bytes()
    d = start_daemon({"max-active-requests": 1, "idle-timeout-s": 5,
                      "request-timeout-s": 1})
    t, first = hold_the_slot(d.port, body, pieces=6, pause_s=0.5)
    assert requests.get(d.url + "/healthz", timeout=10).status_code == 200
    assert requests.get(d.url + "/v1/model", timeout=10).status_code == 200
    r = requests.post(d.url + CLASSIFY, data=body, headers={"Content-Type": "audio/mpeg"},
                      timeout=60)
    refused = time.monotonic()
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "busy"
    assert r.headers.get("Retry-After")
    t.join(60)
    assert first["status"].startswith("HTTP/1.1 200"), first
    assert refused < first["sent"]  # refused while the slot was still held
    # The slot is free again.
    r = requests.post(d.url + CLASSIFY, data=body, headers={"Content-Type": "audio/mpeg"},
                      timeout=60)
    assert r.status_code == 200, r.text
