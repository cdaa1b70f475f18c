"""test_ops.py - genred as operators run it: systemd, Kubernetes, nginx in
front of several replicas. What only a real build and run can show (the
container image built and run with podman, the unit booted under systemd)
is tests/ops/container.py's, which .ci/run runs; this file keeps what that
run cannot show.

- systemd: the configured unit passes `systemd-analyze verify` with no
  message at all, and a broken copy of it does not (so the check can fail);
  it has the directives whose effect no test here observes (the sandbox
  options one by one, the address families, the system call filter, a
  MemoryMax, the install target, a stop timeout above genred's drain).
  `genred serve` sends READY=1 to $NOTIFY_SOCKET only once the model is
  loaded and the port answers, RELOADING=1 then READY=1 around a SIGHUP
  reload, and STOPPING=1 on SIGTERM; a daemon that cannot load its model
  sends nothing.
- deploy/k8s: every manifest parses; the Deployment's probes are /readyz
  (readiness) and /healthz (liveness, startup) on the ops port, it
  has resource requests and limits with GENRED_WORKERS at the CPU limit,
  runs as non-root with a read-only root and no privilege escalation, and
  its preStop plus genred's drain fit in the grace period; Service, HPA and
  PDB select it. Not checked against a Kubernetes API server.
- deploy/sizing.py, where the resource numbers come from, runs.
- deploy/nginx/genred.conf, as shipped (only the replica addresses and the
  listen port replaced): nginx on 127.0.0.1 in front of two genred daemons;
  both serve, and one is stopped with SIGTERM under load with no failed
  request. Issue 12's findings 1-3 against it: slowloris and slow uploads
  end at nginx (the replicas never hold them, a classification and
  /healthz through nginx are answered meanwhile), and every smuggling shape
  is refused with one answer (by nginx itself, or by genred through it).
  In front of three, fed a catalogue by scripts/classify-remote: every file
  answered once.
- deploy/k8s/catalogue/job.yaml: an Indexed Job of the Deployment's image
  whose shard count agrees with its completions; its own shell line, run
  here for every index, does every file of a list exactly once.
"""
import collections
import json
import concurrent.futures
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import pytest
import requests
import yaml

import test_hostile as th

RUN_TIMEOUT_S = 60


def run(argv, **kw):
    kw.setdefault("timeout", RUN_TIMEOUT_S)
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kw)


def need_program(name):
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.access(f"/usr/sbin/{name}", os.X_OK)
                                  else None)
    if not path:
        pytest.fail(f"{name} is not installed (.ci/install-deps test installs it)", pytrace=False)
    return path


def clean_env(**extra):
    """The test environment minus GENRED_* (which genred would read as
    settings) plus extra."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENRED_")}
    env.update(extra)
    return env


# --- systemd -----------------------------------------------------------------

def parse_unit(text):
    """[(section, key, value)] of a unit file, continuation lines joined."""
    entries, section, pending = [], None, ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line!r}"
        entries.append((section, key.strip(), value.strip()))
    return entries


@pytest.fixture(scope="module")
def unit_text(build_root):
    path = build_root / "genred.service"
    assert path.is_file(), f"{path} missing: meson configures it from systemd/genred.service.in"
    return path.read_text()


def conf_default(source_dir, key):
    m = re.search(rf"^{key} = (\S+)$", (source_dir / "conf" / "genred.conf").read_text(),
                  flags=re.M)
    assert m, f"conf/genred.conf has no {key}"
    return m.group(1)


def test_unit_has_the_directives_we_rely_on(unit_text, source_dir):
    entries = parse_unit(unit_text)
    service = collections.defaultdict(list)
    for section, key, value in entries:
        if section == "Service":
            service[key].append(value)
    one = {k: v[-1] for k, v in service.items()}
    # Type=notify, ExecReload, DynamicUser and NoNewPrivileges are seen
    # working under systemd by tests/ops/container.py.
    for key, value in {"ProtectSystem": "strict", "ProtectHome": "yes",
                       "PrivateTmp": "yes", "PrivateDevices": "yes"}.items():
        assert one.get(key) == value, f"{key}={one.get(key)}, want {value}"
    families = set(one["RestrictAddressFamilies"].split())
    # IP for clients; AF_UNIX only because sd_notify() talks over one.
    assert families == {"AF_INET", "AF_INET6", "AF_UNIX"}, families
    assert "@system-service" in service["SystemCallFilter"]
    assert re.fullmatch(r"[0-9]+[KMG]", one["MemoryMax"]), one["MemoryMax"]
    assert ("Install", "WantedBy", "multi-user.target") in entries
    # systemd's SIGKILL must come after genred's own drain deadline.
    drain = float(conf_default(source_dir, "shutdown_timeout_s"))
    assert float(one["TimeoutStopSec"]) > drain, (one["TimeoutStopSec"], drain)


def verifiable(unit_text, genred_bin, source_dir):
    """The unit with ExecStart's binary and conf path moved to the files of
    this tree (the installed paths do not exist on the test machine)."""
    return re.sub(r"^ExecStart=\S+ serve --config \S+$",
                  f"ExecStart={genred_bin} serve --config {source_dir}/conf/genred.conf",
                  unit_text, count=1, flags=re.M)


def systemd_verify(text, tmp_path, name="genred.service"):
    analyze = need_program("systemd-analyze")
    path = tmp_path / name
    path.write_text(text)
    return run([analyze, "verify", "--man=no", path])


def test_unit_passes_systemd_analyze_verify(unit_text, genred_bin, source_dir, tmp_path):
    text = verifiable(unit_text, genred_bin, source_dir)
    assert text != unit_text, "ExecStart line not found"
    r = systemd_verify(text, tmp_path)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", \
        f"systemd-analyze verify: rc {r.returncode}\n{r.stdout}{r.stderr}"


@pytest.mark.parametrize("damage", [("Type=notify", "Type=notfy"),
                                    ("ProtectHome=yes", "ProtectHomme=yes"),
                                    ("/bin/sh -c 'kill", "/bin/no-such-sh -c 'kill")])
def test_systemd_analyze_verify_catches_a_broken_unit(unit_text, genred_bin, source_dir,
                                                      tmp_path, damage):
    text = verifiable(unit_text, genred_bin, source_dir)
    assert damage[0] in text
    r = systemd_verify(text.replace(damage[0], damage[1], 1), tmp_path)
    assert r.stdout + r.stderr != "", f"{damage[1]} went unnoticed"


class NotifySocket:
    """A datagram socket standing in for systemd's $NOTIFY_SOCKET."""

    def __init__(self):
        # A short path: sockaddr_un holds 108 bytes.
        self.dir = tempfile.mkdtemp(prefix="genred-notify-")
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)

    def receive(self, timeout):
        """The next message's assignments as a dict, or None on timeout."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except socket.timeout:
            return None
        return dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)

    def close(self):
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def notify_socket():
    s = NotifySocket()
    yield s
    s.close()


def have_libsystemd():
    value = os.environ.get("GENRED_TEST_HAVE_LIBSYSTEMD")
    if value not in ("0", "1"):
        pytest.fail("GENRED_TEST_HAVE_LIBSYSTEMD is not set (`meson test` sets it)", pytrace=False)
    return value == "1"


def start_serve(genred_bin, model, env, log):
    return subprocess.Popen([str(genred_bin), "serve", "--listen", "127.0.0.1", "--port", "0",
                             "--model", str(model), "--workers", "1"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=env)


def test_ready_after_model_loaded_reloading_on_sighup_stopping_on_sigterm(genred_bin, model_path,
                                                                notify_socket, tmp_path):
    with open(tmp_path / "stderr.log", "wb") as log:
        proc = start_serve(genred_bin, model_path, clean_env(NOTIFY_SOCKET=notify_socket.path),
                           log)
    try:
        line = proc.stdout.readline().decode()
        m = re.match(r"genred: listening on (http://127\.0\.0\.1:\d+)", line)
        assert m, f"no listening line: {line!r}"
        url = m.group(1)
        if not have_libsystemd():
            assert notify_socket.receive(timeout=2) is None, "notified without libsystemd"
            return
        msg = notify_socket.receive(timeout=30)
        assert msg == {"READY": "1"}, msg
        # READY=1 means ready: the model answers and the queue accepts.
        with requests.Session() as s:
            s.trust_env = False
            assert s.get(url + "/readyz", timeout=10).status_code == 200
            assert s.get(url + "/v1/model", timeout=10).json()["genres"]
        # systemctl reload: RELOADING=1, the model loaded again, READY=1.
        proc.send_signal(signal.SIGHUP)
        assert notify_socket.receive(timeout=30) == {"RELOADING": "1"}
        assert notify_socket.receive(timeout=30) == {"READY": "1"}
        proc.send_signal(signal.SIGTERM)
        assert notify_socket.receive(timeout=30) == {"STOPPING": "1"}
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        proc.stdout.close()


def test_no_ready_when_the_model_does_not_load(genred_bin, notify_socket, tmp_path):
    bad = tmp_path / "not-a-model.gmodel"
    bad.write_bytes(b"this is not a model\n")
    with open(tmp_path / "stderr.log", "wb") as log:
        proc = start_serve(genred_bin, bad, clean_env(NOTIFY_SOCKET=notify_socket.path), log)
    try:
        assert proc.wait(timeout=30) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        proc.stdout.close()
    assert notify_socket.receive(timeout=0.5) is None, "READY sent although the model failed"


# --- deploy/k8s ---------------------------------------------------------------

@pytest.fixture(scope="module")
def manifests(source_dir):
    docs = {}
    files = sorted((source_dir / "deploy" / "k8s").glob("*.yaml"))
    assert files, "no deploy/k8s/*.yaml"
    for f in files:
        for doc in yaml.safe_load_all(f.read_text()):
            assert isinstance(doc, dict) and doc.get("apiVersion") and doc.get("kind"), f
            assert doc["metadata"]["name"], f
            docs[doc["kind"]] = doc
    return docs


def test_k8s_deployment_probes_resources_and_user(manifests, source_dir):
    dep = manifests["Deployment"]
    assert dep["apiVersion"] == "apps/v1"
    pod = dep["spec"]["template"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (c,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    env = {e["name"]: e["value"] for e in c["env"]}
    assert ports == {"http": int(env["GENRED_PORT"]), "ops": int(env["GENRED_OPS_PORT"])}
    assert list(ports)[0] == "http"  # tests/ops/container.py posts to the first
    # Probes and scrapes on the ops listener, which clients cannot crowd.
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(ports["ops"])

    def probe(kind):
        p = c[kind]["httpGet"]
        assert p["port"] in ("ops", ports["ops"]), p
        return p["path"]

    assert probe("readinessProbe") == "/readyz"
    assert probe("livenessProbe") == "/healthz"
    assert probe("startupProbe") == "/healthz"

    res = c["resources"]
    for key in ("cpu", "memory"):
        assert key in res["requests"], f"no {key} request"
    assert "memory" in res["limits"]
    mem = {k: int(v[:-2]) * {"Mi": 1, "Gi": 1024}[v[-2:]] for k, v in
           (("req", res["requests"]["memory"]), ("lim", res["limits"]["memory"]))}
    assert mem["lim"] >= mem["req"]
    # genred sizes its worker pool and its classification slots from the
    # node's cores, not the pod's CPUs.
    cpus = int(float(res["limits"]["cpu"]))
    assert int(env["GENRED_WORKERS"]) == cpus, env
    assert int(env["GENRED_MAX_ACTIVE_REQUESTS"]) == 2 * cpus, env

    # That the image runs with this user, these args and a read-only root
    # is tests/ops/container.py's (it runs the image with them).
    sc = pod["spec"]["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0
    csc = c["securityContext"]
    assert csc["allowPrivilegeEscalation"] is False and csc["readOnlyRootFilesystem"] is True
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    pre = c["lifecycle"]["preStop"]["exec"]["command"]
    # preStop, then genred's drain deadline, both before the kubelet's SIGKILL.
    drain = float(conf_default(source_dir, "shutdown_timeout_s"))
    assert pre[0] == "sleep" and int(pre[1]) + drain < grace, (pre, drain, grace)


def test_k8s_service_hpa_and_pdb_select_the_deployment(manifests):
    dep = manifests["Deployment"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    svc = manifests["Service"]
    assert svc["spec"]["selector"].items() <= labels.items()
    (port,) = svc["spec"]["ports"]
    assert port["targetPort"] == "http"
    hpa = manifests["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", dep["metadata"]["name"])
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    pdb = manifests["PodDisruptionBudget"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]


# --- nginx in front of two replicas ------------------------------------------

NGINX_MAIN = """\
worker_processes 1;
{user}
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 4096; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    include {dir}/genred.conf;
}}
"""
SERVER_LINE = re.compile(r"^(\s*)server 127\.0\.0\.1:\d+( [^;]*)?;$", flags=re.M)
LISTEN_LINE = re.compile(r"^(\s*)listen 8080;$", flags=re.M)
NGINX_START_S = 15


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nginx:
    """deploy/nginx/genred.conf under a throwaway prefix: its replica lines
    (as many as ports, each with the first line's options) pointed at the
    given ports, its listen line at a free 127.0.0.1 port."""

    def __init__(self, binary, example, workdir, upstream_ports):
        text = example.read_text()
        servers = list(SERVER_LINE.finditer(text))
        assert len(servers) == 2 and len(LISTEN_LINE.findall(text)) == 1, \
            "deploy/nginx/genred.conf changed shape: update this test"
        indent, options = servers[0].group(1), servers[0].group(2) or ""
        replicas = "\n".join(f"{indent}server 127.0.0.1:{p}{options};" for p in upstream_ports)
        text = text[:servers[0].start()] + replicas + SERVER_LINE.sub("", text[servers[0].end():])
        self.dir = workdir
        self.log = workdir / "error.log"
        for attempt in range(3):
            self.port = free_port()
            conf = LISTEN_LINE.sub(lambda m: f"{m.group(1)}listen 127.0.0.1:{self.port};", text)
            (workdir / "genred.conf").write_text(conf)
            # As root, workers would drop to `nobody`, who cannot write the
            # temporary folders under pytest's private tmp.
            user = "user root root;" if os.geteuid() == 0 else ""
            (workdir / "nginx.conf").write_text(NGINX_MAIN.format(dir=workdir, user=user))
            self.proc = subprocess.Popen([binary, "-p", str(workdir), "-c",
                                          str(workdir / "nginx.conf"), "-e", str(self.log),
                                          "-g", "daemon off;"],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
            if self._wait_up():
                return
            self.stop()
            if "Address already in use" not in self.log_text():
                break
        pytest.fail(f"nginx did not start:\n{self.log_text()[-3000:]}", pytrace=False)

    def _wait_up(self):
        deadline = time.monotonic() + NGINX_START_S
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return True
            except OSError:
                time.sleep(0.05)
        return False

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def log_text(self):
        try:
            return self.log.read_text("utf-8", "replace")
        except OSError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture
def nginx_pair(start_daemon, source_dir, tmp_path):
    """Two genred daemons and nginx in front of them."""
    binary = need_program("nginx")
    a = start_daemon({"workers": 1})
    b = start_daemon({"workers": 1})
    work = tmp_path / "nginx"
    work.mkdir()
    n = Nginx(binary, source_dir / "deploy" / "nginx" / "genred.conf", work, [a.port, b.port])
    yield n, a, b
    n.stop()


def classified_ok(d):
    """genred_requests_total{route="/v1/classify",status="200"} of a daemon."""
    text = d.request("GET", "/metrics", timeout=10).text
    m = re.search(r'^genred_requests_total\{route="/v1/classify",status="200"\} (\d+)$', text,
                  flags=re.M)
    return int(m.group(1)) if m else 0


def post_via(url, body, timeout=120):
    with requests.Session() as s:
        s.trust_env = False
        return s.post(url + "/v1/classify", data=body, headers={"Content-Type": "audio/mpeg"},
                      timeout=timeout)


def test_nginx_spreads_requests_over_both_replicas(nginx_pair, audio):
    n, a, b = nginx_pair
    body = audio.excerpt_mp3.read_bytes()
    answers = [post_via(n.url, body) for _ in range(6)]
    assert [r.status_code for r in answers] == [200] * 6, [r.text[:200] for r in answers]
    assert len({r.json()["top"] for r in answers}) == 1
    deadline = time.monotonic() + 5  # a request is counted just after its answer
    while True:
        served = (classified_ok(a), classified_ok(b))
        if sum(served) >= 6 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert sum(served) == 6 and min(served) >= 2, f"requests per replica: {served}"


def test_stopping_one_replica_under_load_fails_no_request(nginx_pair, audio):
    """Three clients send 3-minute songs through nginx; after a few answers
    one replica gets SIGTERM and exits; the clients go on. Every request
    must get its 200, and the replica left must serve the rest."""
    n, a, b = nginx_pair
    body = audio.song_mp3.read_bytes()
    total, stop_after, clients = 18, 4, 3
    done = threading.Semaphore(0)
    stopped = threading.Event()
    results = [None] * total
    timeline = {}

    def client(i):
        try:
            r = post_via(n.url, body)
            results[i] = (r.status_code, r.json().get("top") if r.status_code == 200 else r.text)
        except requests.RequestException as e:
            results[i] = (None, repr(e))
        finally:
            done.release()

    def stopper():
        for _ in range(stop_after):
            done.acquire()
        timeline["sigterm"] = time.monotonic()
        timeline["a_rc"] = a.stop()
        timeline["a_exit"] = time.monotonic()
        timeline["b_before"] = classified_ok(b)
        stopped.set()

    t = threading.Thread(target=stopper)
    t.start()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        futures = []
        for i in range(total):
            if i == total - clients * 2:
                # The last requests start only after A has exited.
                assert stopped.wait(timeout=120), "replica A did not stop in time"
            futures.append(pool.submit(client, i))
        for f in futures:
            f.result(timeout=300)
    t.join(timeout=120)

    failed = [(i, r) for i, r in enumerate(results) if r is None or r[0] != 200]
    assert not failed, f"{len(failed)} of {total} requests failed: {failed[:5]}\n" \
                       f"nginx log:\n{n.log_text()[-2000:]}"
    assert len({r[1] for r in results}) == 1, f"answers differ: {collections.Counter(results)}"
    assert timeline["a_rc"] == 0, f"replica A exited with {timeline['a_rc']}:\n{a.log_tail()}"
    deadline = time.monotonic() + 5  # a request is counted just after its answer
    while classified_ok(b) - timeline["b_before"] < clients * 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    after = classified_ok(b) - timeline["b_before"]
    assert after >= clients * 2, f"replica B served {after} requests after A stopped"
    a_log = a.log_tail(limit=1 << 20)
    drained = a_log[a_log.find('"event":"shutdown"'):].count('"event":"request"')
    tried_a = re.findall(rf'^.*upstream: "http://127\.0\.0\.1:{a.port}/.*$', n.log_text(),
                         flags=re.M)
    why = collections.Counter(re.sub(r"^.*?\[\w+\] [0-9#]+: \*[0-9]+ ", "", line)
                              .split(" while ")[0] for line in tried_a)
    print(f"\nreplica A: SIGTERM to exit {timeline['a_exit'] - timeline['sigterm']:.2f} s, "
          f"{drained} request(s) logged after its shutdown line; nginx moved "
          f"{len(tried_a)} attempt(s) from A to B: {dict(why)}")
    # nginx noticed A was gone (refused or dropped connections) and went on.
    assert f'upstream: "http://127.0.0.1:{a.port}/' in n.log_text(), \
        "nginx never tried the stopped replica"


def test_sizing_script_measures_a_replica(source_dir, genred_bin, model_path, audio):
    """deploy/sizing.py, the source of the resource numbers, on a short run."""
    r = run(["/usr/bin/python3", source_dir / "deploy" / "sizing.py", "--genred", genred_bin,
             "--model", model_path, "--audio", audio.excerpt_mp3, "--requests", "2",
             "--concurrency", "2"], env=clean_env(), timeout=300)
    assert r.returncode == 0, r.stderr
    phases = [json.loads(line) for line in r.stdout.splitlines()]
    assert [p["phase"] for p in phases] == ["idle", "sequential", "concurrent"], phases
    assert phases[0]["rss_mib"] > 0
    for p in phases[1:]:
        assert p["statuses"] == {"200": p["requests"]}, p
        assert p["cpu_s_per_song"] > 0 and p["songs_per_s"] > 0
        assert p["peak_rss_mib"] >= p["rss_mib"] > phases[0]["rss_mib"] / 2


# --- nginx against issue 12's hostile clients --------------------------------

def replica_connections(d):
    """Connections a replica holds open, this request's own included."""
    m = re.search(r"^genred_connections (\d+)$", d.request("GET", "/metrics", timeout=5).text,
                  flags=re.M)
    return int(m.group(1))


def test_nginx_keeps_slow_clients_off_the_replicas(nginx_pair, audio):
    """300 slowloris connections and 100 uploads of a byte a second, all to
    nginx. nginx holds them (the header block within client_header_timeout,
    the body at its pace, buffered whole before a replica is picked); the
    replicas only ever hold what nginx opens to them, and a classification
    and /healthz through nginx, from another address, are answered at
    once."""
    n, a, b = nginx_pair
    head = (b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: audio/mpeg\r\n"
            b"Content-Length: 100000\r\n\r\n")
    flood = th.slowloris(n.port)
    slow = th.Flood(n.port, 100, head, b"x", 1.0, reopen=False)
    try:
        time.sleep(1.5)
        probes = th.Prober(n.url, source=th.OTHER_CLIENT)
        held = []
        status, took = th.classify_from(n.port, audio.excerpt_mp3.read_bytes(), th.OTHER_CLIENT)
        while len(held) < 10:
            held.append(max(replica_connections(a), replica_connections(b)))
            time.sleep(0.5)
        probes.stop()
    finally:
        flood.stop()
        slow.stop()
    assert status == 200, status
    probe_max = probes.check()
    print(f"\nnginx under {th.FLOOD} slowloris + 100 slow uploads: replicas held at most "
          f"{max(held)} connections; classify {took:.2f} s; /healthz and /readyz max "
          f"{probe_max * 1e3:.0f} ms over {len(probes.results)}")
    # What nginx keeps open to a replica (keepalive 16), and the metrics
    # request itself; never the flood's hundreds.
    assert max(held) <= 16 + 2, held


SMUGGLED = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
CLASSIFY_HEAD = b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: audio/wav\r\n"
SHAPES = {
    "content-length-and-chunked": (CLASSIFY_HEAD + b"Content-Length: 5\r\n"
                                   b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED, 400),
    "two-content-lengths": (CLASSIFY_HEAD + b"Content-Length: 3\r\nContent-Length: 61\r\n\r\n"
                            b"abc" + SMUGGLED + b"x" * 20, 400),
    "unknown-coding": (CLASSIFY_HEAD + b"Transfer-Encoding: gzip\r\n\r\n0\r\n\r\n" + SMUGGLED,
                       501),
    "nul-in-path": (b"GET /metrics%00 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "raw-nul-in-path": (b"GET /healthz\x00x HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "query-flood": (b"GET /healthz?" + b"&".join(b"p%d=1" % i for i in range(500)) +
                    b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
}


def test_nginx_refuses_every_smuggling_shape(nginx_pair):
    """Each shape gets its refusal as the one answer to its bytes, and the
    /metrics request hidden in a body is never answered. nginx refuses the
    framing shapes and the NUL paths itself (HTML bodies), so the replicas
    never see them; the query flood it passes on, and genred answers 414."""
    n, a, b = nginx_pair
    seen = []
    for name, (data, status) in SHAPES.items():
        answers = th.exchange(n.port, data, timeout=2.0, half_close=False)
        assert answers and answers[0][0] == status, (name, [r[:2] for r in answers])
        assert len(answers) == 1, (name, [r[:2] for r in answers])
        assert b"genred_build_info" not in answers[0][2], name
        seen.append(f"{name} {status}")
    logs = a.log_tail(1 << 20) + b.log_tail(1 << 20)
    statuses = [json.loads(line)["status"] for line in logs.splitlines()
                if '"event":"request"' in line]
    assert statuses.count(414) == 1 and not set(statuses) - {414, 200}, statuses
    print("\nthrough nginx: " + ", ".join(seen))
# --- catalogues larger than one machine ---------------------------------------

def catalogue_files(audio, folder, n):
    """n files under folder: copies of two excerpts, under their own names."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        src = audio.excerpt_mp3 if i % 2 == 0 else audio.excerpt_wav
        files.append(folder / f"track{i:03d}{src.suffix}")
        shutil.copyfile(src, files[-1])
    return files


def test_catalogue_through_nginx_to_three_daemons(start_daemon, source_dir, audio, tmp_path):
    """Three daemons behind deploy/nginx/genred.conf, fed by
    scripts/classify-remote with at most 6 uploads in flight: every file of
    the catalogue gets one line, every daemon works, and the daemons
    answered each file once (nginx retried nothing that had been answered).
    Run again, nothing is sent: the output already holds every file."""
    binary = need_program("nginx")
    daemons = [start_daemon({"workers": 1}) for _ in range(3)]
    work = tmp_path / "nginx"
    work.mkdir()
    n = Nginx(binary, source_dir / "deploy" / "nginx" / "genred.conf", work,
              [d.port for d in daemons])
    try:
        files = catalogue_files(audio, tmp_path / "catalogue", 18)
        listing = tmp_path / "files.txt"
        listing.write_text("".join(f"{f}\n" for f in files))
        out = tmp_path / "tags.jsonl"
        argv = ["/usr/bin/python3", source_dir / "scripts" / "classify-remote", "--url", n.url,
                "--jobs", "6", "--files-from", listing, "--output", out]
        r = run(argv, env=clean_env(), timeout=300)
        assert r.returncode == 0, r.stderr
        lines = [json.loads(x) for x in out.read_text().splitlines()]
        assert [x["file"] for x in lines] == [str(f) for f in files]
        assert all(x["chunks"] == 10 for x in lines)
        served = [classified_ok(d) for d in daemons]
        assert sum(served) == len(files) and min(served) >= 1, f"per daemon: {served}"
        r = run(argv, env=clean_env(), timeout=300)
        assert r.returncode == 0 and len(out.read_text().splitlines()) == len(files), r.stderr
        assert [classified_ok(d) for d in daemons] == served, "resumed run sent requests"
    finally:
        n.stop()


@pytest.fixture(scope="module")
def catalogue_job(source_dir):
    docs = list(yaml.safe_load_all((source_dir / "deploy" / "k8s" / "catalogue" /
                                    "job.yaml").read_text()))
    assert len(docs) == 1
    return docs[0]


def test_k8s_catalogue_job_is_an_indexed_job_of_the_same_image(catalogue_job, manifests):
    job = catalogue_job
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert 1 <= spec["parallelism"] <= spec["completions"]
    assert spec["backoffLimitPerIndex"] >= 1
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"  # what backoffLimitPerIndex requires
    (c,) = pod["containers"]
    (served,) = manifests["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert c["image"] == served["image"], "not the image the Deployment serves with"
    env = {e["name"]: e for e in c["env"]}
    index = env["SHARD"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert index == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    assert int(env["GENRED_WORKERS"]["value"]) == int(float(c["resources"]["limits"]["cpu"]))
    (script,) = c["args"]
    assert c["command"] == ["/bin/sh", "-c"]
    assert f'--shard "$SHARD/{spec["completions"]}"' in script, \
        "completions and the shard count disagree"
    assert pod["securityContext"]["runAsNonRoot"] is True
    csc = c["securityContext"]
    assert csc["readOnlyRootFilesystem"] is True and csc["allowPrivilegeEscalation"] is False
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/catalogue"]["readOnly"] is True and "/results" in mounts
    assert "/var/cache/genred" in mounts  # FFTW wisdom on a read-only root


def test_k8s_catalogue_job_commands_do_every_file_exactly_once(catalogue_job, genred_bin,
                                                               source_dir, audio, tmp_path):
    """The Job's own shell line, run for every completion index with the
    paths moved to this machine (/usr/bin/genred, /etc/genred/genred.conf,
    /catalogue and /results): the shards' outputs together hold every file
    of the list exactly once; the shard with a broken file still exits 0;
    an index run again (a replaced pod) adds nothing."""
    spec = catalogue_job["spec"]
    (script,) = spec["template"]["spec"]["containers"][0]["args"]
    catalogue, results = tmp_path / "catalogue", tmp_path / "results"
    results.mkdir()
    files = catalogue_files(audio, catalogue, 24)
    (catalogue / "broken.mp3").write_bytes(b"not audio\n" * 100)
    files.append(catalogue / "broken.mp3")
    (catalogue / "files.txt").write_bytes(b"".join(os.fsencode(f) + b"\0" for f in files))
    local = (script.replace("/usr/bin/genred", str(genred_bin))
             .replace("/etc/genred/genred.conf", str(source_dir / "conf" / "genred.conf"))
             .replace("/catalogue/", f"{catalogue}/").replace("/results/", f"{results}/"))
    assert local.count(str(tmp_path)) == 2, local
    for k in range(spec["completions"]):
        r = run(["/bin/sh", "-c", local], env=clean_env(SHARD=str(k)), cwd=source_dir,
                timeout=120)
        assert r.returncode == 0, f"index {k}: {r.stderr}"
    done = [json.loads(x)["file"] for f in sorted(results.glob("shard-*.jsonl"))
            for x in f.read_text().splitlines()]
    assert sorted(done) == sorted(str(f) for f in files), "a file done twice or never"
    assert len(list(results.glob("shard-*.jsonl"))) == spec["completions"]
    before = {f: f.read_bytes() for f in results.glob("shard-*.jsonl")}
    r = run(["/bin/sh", "-c", local], env=clean_env(SHARD="3"), cwd=source_dir, timeout=120)
    assert r.returncode == 0 and {f: f.read_bytes() for f in before} == before
