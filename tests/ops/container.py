#!/usr/bin/python3
"""container.py - docker/Dockerfile and systemd/genred.service, run for real.

What it does, in order, with podman and systemd-nspawn from Debian packages
and its own podman storage under WORK (default build/ops; git ignores it):

1. base: no registry is reachable, so it makes the Dockerfile's bases with
   `debootstrap --variant=minbase bookworm` from this machine's apt mirror,
   trimmed like Docker Hub's debian:bookworm-slim (no documentation, manuals,
   translations or apt lists) but without its apt clean-up hook, so a
   Dockerfile that leaves downloaded .debs behind shows it. Imported once as
   debian:bookworm and debian:bookworm-slim; later runs reuse it (a new
   import would throw away podman's build cache).
2. image: `podman build --format docker` (the OCI format drops HEALTHCHECK)
   of docker/Dockerfile; its size; every library resolves; no .deb or apt
   list left; the user is the number the Kubernetes Deployment runs as.
3. container as `docker run` starts it (the README's command): /healthz;
   real audio classified as multipart and raw upload, with the answer of the
   binary CI tested (build/genred); the HEALTHCHECK passes; FFTW's plan is
   measured and saved on the first start and loaded on the second; `podman
   stop` ends it with exit 0 long before the stop timeout.
4. container as deploy/k8s/deployment.yaml runs it: its env, args, user,
   read-only root, no capabilities, no privilege escalation, CPU and memory
   limits and emptyDir volumes; every probe answers 200, a song is
   classified, the plan is saved in the volume; stopped with exit 0.
5. container with a TLS certificate: the HEALTHCHECK passes over HTTPS, and
   its command fails where nothing listens.
6. systemd: the image's root filesystem plus systemd, booted with
   `systemd-nspawn -b` (private network); genred.service as the image
   installed it. Start reaches active (Type=notify: only through READY=1);
   /healthz and a classification; a dynamic user (none in /etc/passwd);
   seccomp, NoNewPrivs and empty capability sets on the main process; no
   libgcrypt "insecure memory" warning; the plan saved in CacheDirectory=;
   `systemctl reload` keeps the main PID and reloads the model; `systemd-
   analyze security` at most MAX_EXPOSURE; MemoryMax= and TasksMax= in the
   kernel where cgroup v2 has the controllers; stop ends with Result=success.

Not covered: MemoryMax= and TasksMax= on cgroup v1 ("hybrid", as on the
machines this was written on: the run says they are set but not enforced);
a real Docker engine or Kubernetes cluster (podman runs the same image, and
the Deployment's settings translated to podman flags).

Everything it starts (containers, the nspawn machine, its root) is removed
at the end, also on failure or SIGTERM; the images stay in WORK as build
cache. Exit status: 0 passed, 1 failed, 77 skipped (only without root or
CAP_SYS_ADMIN, which podman and systemd-nspawn need; the reason is printed).

Usage: tests/ops/container.py [--work DIR] [--genred BIN] [--shared DIR]
"""
import argparse
import contextlib
import glob
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import requests
import yaml

SOURCE = pathlib.Path(__file__).resolve().parents[2]
IMAGE = "localhost/genred:test"
BUILD_STAGE = "localhost/genred-build:test"
SYSTEMD_IMAGE = "localhost/genred-systemd:test"
BASES = ("debian:bookworm", "debian:bookworm-slim")
PREFIX = f"genred-test-{os.getpid()}"
MAX_EXPOSURE = 1.5          # systemd-analyze security: 0 locked down .. 10 exposed
STOP_TIMEOUT_S = 35         # the README's `docker run --stop-timeout 35`
START_TIMEOUT_S = 60
DYNAMIC_UIDS = range(61184, 65520)   # systemd's DynamicUser= range
SKIP = 77


class Failed(Exception):
    pass


class Interrupted(Exception):
    pass


def check(ok, what):
    if not ok:
        raise Failed(what)


def log(msg):
    print(msg, flush=True)


def run(argv, timeout=120, ok=True, **kw):
    """argv's result; Failed when it times out or (ok) exits non-zero."""
    argv = [str(a) for a in argv]
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    try:
        r = subprocess.run(argv, timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        raise Failed(f"timed out after {timeout} s: {' '.join(argv)}")
    if ok and r.returncode != 0:
        raise Failed(f"exit {r.returncode}: {' '.join(argv)}\n{(r.stdout or '')[-2000:]}"
                     f"{(r.stderr or '')[-3000:]}")
    return r


def podman(*args, **kw):
    return run(["podman", *args], **kw)


class Phases:
    """Wall time of each step, printed as it ends and summed at the end."""

    def __init__(self):
        self.times = []

    @contextlib.contextmanager
    def __call__(self, name):
        t0 = time.monotonic()
        log(f"--- {name}")
        try:
            yield
        finally:
            dt = time.monotonic() - t0
            self.times.append((name, dt))
            log(f"    {name}: {dt:.1f} s")

    def summary(self):
        return ", ".join(f"{n} {t:.0f} s" for n, t in self.times) + \
            f"; total {sum(t for _, t in self.times):.0f} s"


def poll(what, fn, timeout, interval=0.25):
    """fn()'s first true value within timeout seconds, else Failed."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            value = fn()
            if value:
                return value
        except (OSError, requests.RequestException, Failed) as e:
            last = e
        if time.monotonic() > deadline:
            raise Failed(f"{what}: not within {timeout} s" + (f" (last: {last})" if last else ""))
        time.sleep(interval)


# --- the machine -------------------------------------------------------------

def cannot_run():
    """Why this machine cannot run the test, or None."""
    if os.geteuid() != 0:
        return "needs root: rootful podman and systemd-nspawn -b"
    with open("/proc/self/status") as f:
        eff = int(re.search(r"^CapEff:\s*([0-9a-f]+)$", f.read(), flags=re.M).group(1), 16)
    if not eff & (1 << 21):
        return "needs CAP_SYS_ADMIN (mounts and namespaces), which this process lacks"
    return None


def need_tools():
    missing = [t for t in ("podman", "runc", "debootstrap", "systemd-nspawn", "nsenter",
                           "ffmpeg", "openssl", "tar")
               if not shutil.which(t) and not os.access(f"/usr/sbin/{t}", os.X_OK)]
    check(not missing, f"missing {', '.join(missing)} (.ci/install-deps test installs them)")


def podman_env(work):
    """podman configured by files of our own: runc (crun cannot start
    containers here: setrlimit RLIMIT_NOFILE, then cgroups in hybrid mode),
    ulimits it can set, storage under work, and no registry to ask for short
    names (nothing is pulled; the bases are local)."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "containers.conf").write_text(
        '[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n'
        '[engine]\nruntime = "runc"\n')
    (work / "storage.conf").write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{work}/storage/graph"\n'
        f'runroot = "{work}/storage/run"\n')
    (work / "registries.conf").write_text('unqualified-search-registries = []\n')
    os.environ["CONTAINERS_CONF"] = str(work / "containers.conf")
    os.environ["CONTAINERS_STORAGE_CONF"] = str(work / "storage.conf")
    os.environ["CONTAINERS_REGISTRIES_CONF"] = str(work / "registries.conf")


def apt_mirrors():
    """(Debian mirror, security mirror or None) from this machine's apt
    sources, deb822 or one-line."""
    stanzas = []
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        for block in re.split(r"\n\s*\n", pathlib.Path(path).read_text()):
            fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", block, flags=re.M))
            if "deb" in fields.get("Types", "").split():
                for uri in fields.get("URIs", "").split():
                    stanzas.append((uri, fields.get("Suites", "").split()))
    for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
        if os.path.exists(path):
            for line in pathlib.Path(path).read_text().splitlines():
                m = re.match(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", line)
                if m:
                    stanzas.append((m.group(1), [m.group(2)]))
    main = next((u for u, s in stanzas if "bookworm" in s), None)
    security = next((u for u, s in stanzas if "bookworm-security" in s), None)
    check(main, "no bookworm mirror in /etc/apt/sources*: debootstrap needs one")
    return main.rstrip("/"), security.rstrip("/") if security else None


SLIM_DPKG = """\
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
"""


def make_bases(work):
    if all(podman("image", "exists", b, ok=False).returncode == 0 for b in BASES):
        log("    reusing debian:bookworm(-slim) from an earlier run")
        return
    mirror, security = apt_mirrors()
    root = work / "rootfs"
    shutil.rmtree(root, ignore_errors=True)
    try:
        run(["debootstrap", "--variant=minbase", "bookworm", root, mirror], timeout=600)
        sources = f"Types: deb\nURIs: {mirror}\nSuites: bookworm bookworm-updates\n" \
                  "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        if security:
            sources += f"\nTypes: deb\nURIs: {security}\nSuites: bookworm-security\n" \
                       "Components: main\n" \
                       "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        (root / "etc/apt/sources.list").unlink(missing_ok=True)
        (root / "etc/apt/sources.list.d/debian.sources").write_text(sources)
        (root / "etc/dpkg/dpkg.cfg.d/docker").write_text(SLIM_DPKG)
        for d in ("usr/share/man", "usr/share/info", "usr/share/locale", "usr/share/lintian",
                  "var/lib/apt/lists", "var/cache/apt/archives"):
            for p in (root / d).glob("*"):
                if p.is_dir() and not p.is_symlink() and p.name not in ("partial", "auxfiles"):
                    shutil.rmtree(p)
                elif p.is_file() or p.is_symlink():
                    p.unlink()
        for p in (root / "usr/share/doc").glob("*/*"):
            if p.name != "copyright":
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        tar = subprocess.Popen(["tar", "-C", str(root), "--numeric-owner", "-c", "."],
                               stdout=subprocess.PIPE)
        try:
            podman("import", "-", BASES[0], stdin=tar.stdout, timeout=300)
        finally:
            tar.stdout.close()
            tar.wait(timeout=60)
        check(tar.returncode == 0, f"tar of {root} failed")
        for b in BASES[1:]:
            podman("tag", BASES[0], b)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def image_size_mb(ref):
    return int(podman("image", "inspect", "--format", "{{.Size}}", ref).stdout) / 1e6


# --- containers ----------------------------------------------------------------

class Containers:
    """Containers started by this run, named PREFIX-*, removed at the end."""

    def __init__(self):
        self.names = []

    def start(self, name, args):
        full = f"{PREFIX}-{name}"
        self.names.append(full)
        # slirp4netns: user-mode networking, so nothing is added to the
        # host's bridges or firewall; ports are published on 127.0.0.1 only.
        podman("run", "-d", "--name", full, "--network", "slirp4netns", *args, timeout=120)
        return full

    def remove_all(self):
        for n in reversed(self.names):
            podman("rm", "-f", n, ok=False, timeout=60)
        self.names.clear()


def host_port(name, port):
    out = podman("port", name, f"{port}/tcp").stdout.strip().splitlines()
    check(out, f"{name}: {port}/tcp is not published")
    return int(out[0].rsplit(":", 1)[1])


def session():
    s = requests.Session()
    s.trust_env = False
    return s


def logs(name):
    r = podman("logs", name, ok=False)
    return r.stdout + r.stderr


def events(text, event):
    """genred's JSON log lines with this event."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                d = json.loads(line)
            except ValueError:
                continue
            if d.get("event") == event:
                out.append(d)
    return out


def wait_http(url, timeout=START_TIMEOUT_S):
    with session() as s:
        return poll(f"GET {url}", lambda: s.get(url, timeout=5).status_code == 200, timeout)


def wisdom_saved(read_log, what):
    """genred measures FFTW's plan once it listens and saves it: the saved
    event, waited for."""
    def saved():
        found = events(read_log(), "fftw_wisdom")
        check(all(e.get("status") == "saved" for e in found), f"{what}: {found}")
        return found[0] if found else None
    try:
        return poll(f"{what}: FFTW's plan saved", saved, 30)
    except Failed as e:
        raise Failed(f"{e}\n{read_log()[-2000:]}")


def check_answer(ans, reference, what):
    check(isinstance(ans, dict) and ans.get("chunks", 0) > 0, f"{what}: {str(ans)[:300]}")
    got = {g["genre"]: g["probability"] for g in ans["genres"]}
    want = {g["genre"]: g["probability"] for g in reference["genres"]}
    check(ans["top"] == reference["top"] and ans["chunks"] == reference["chunks"] and
          got.keys() == want.keys() and
          all(abs(got[k] - want[k]) < 1e-3 for k in want),
          f"{what}: the image's answer differs from build/genred's:\n{ans}\n{reference}")


def stop_exits_zero(name, timeout_s):
    t0 = time.monotonic()
    podman("stop", "-t", timeout_s, name, timeout=timeout_s + 30)
    took = time.monotonic() - t0
    state = json.loads(podman("inspect", "--format", "{{json .State}}", name).stdout)
    check(state["ExitCode"] == 0 and took < timeout_s,
          f"{name}: stop took {took:.1f} s (limit {timeout_s}), exit {state['ExitCode']}")
    return took


def check_image(ref, deployment):
    (info,) = json.loads(podman("image", "inspect", ref).stdout)
    cfg, health = info["Config"], info.get("Healthcheck") or {}
    check(health.get("Test", [None])[0] == "CMD-SHELL", f"no HEALTHCHECK in the image: {health}")
    pod = deployment["spec"]["template"]["spec"]
    user = f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"
    check(cfg.get("User") == user, f"image user {cfg.get('User')}, Deployment runs as {user}")
    ldd = podman("run", "--rm", "--network", "none", "--entrypoint", "ldd", ref,
                 "/usr/bin/genred").stdout
    check("not found" not in ldd, f"unresolved libraries in the image:\n{ldd}")
    left = podman("run", "--rm", "--network", "none", "--user", "0", "--entrypoint", "find", ref,
                  "/var/cache/apt", "/var/lib/apt/lists", "-type", "f",
                  "(", "-name", "*.deb", "-o", "-path", "/var/lib/apt/lists/*", ")",
                  "!", "-name", "lock").stdout
    check(not left.strip(), f"apt left files in the image:\n{left[:1000]}")
    return health["Test"][1]


def container_as_docker_runs_it(cs, audio, reference):
    name = cs.start("docker", ["-p", "127.0.0.1::8080", "-e", "GENRED_WORKERS=2", IMAGE])
    url = f"http://127.0.0.1:{host_port(name, 8080)}"
    wait_http(url + "/healthz")
    with session() as s:
        with open(audio["mp3"], "rb") as f:
            r = s.post(url + "/v1/classify", files={"file": ("song.mp3", f, "audio/mpeg")},
                       timeout=120)
        check(r.status_code == 200, f"multipart upload: {r.status_code} {r.text[:300]}")
        check_answer(r.json(), reference["mp3"], "multipart MP3")
        r = s.post(url + "/v1/classify", data=audio["flac"].read_bytes(),
                   headers={"Content-Type": "audio/flac"}, timeout=120)
        check(r.status_code == 200, f"raw upload: {r.status_code} {r.text[:300]}")
        check_answer(r.json(), reference["flac"], "raw FLAC")
    hc = podman("healthcheck", "run", name, ok=False)
    check(hc.returncode == 0, f"HEALTHCHECK failed: {hc.stdout}{hc.stderr}")
    saved = wisdom_saved(lambda: logs(name), "the first start")
    check(saved["path"] == "/var/cache/genred/fftw-wisdom", f"plan saved at {saved['path']}")
    took = stop_exits_zero(name, STOP_TIMEOUT_S)
    log(f"    podman stop: exit 0 after {took:.1f} s")
    # The second start loads the plan: nothing is measured or saved again.
    podman("start", name)
    url = f"http://127.0.0.1:{host_port(name, 8080)}"
    wait_http(url + "/healthz")
    text = logs(name)
    check(len(events(text, "fftw_wisdom")) == 1,
          f"the second start did not reuse the saved plan:\n{text[-2000:]}")
    stop_exits_zero(name, STOP_TIMEOUT_S)


def k8s_flags(deployment):
    """podman flags for the Deployment's one container, and its ports."""
    pod = deployment["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    flags = []
    known_pod = {"securityContext", "containers", "volumes", "terminationGracePeriodSeconds"}
    check(set(pod) <= known_pod, f"pod spec keys {set(pod) - known_pod}: teach container.py")
    sc = pod["securityContext"]
    flags += ["--user", f"{sc['runAsUser']}:{sc['runAsGroup']}"]
    csc = c["securityContext"]
    if csc.get("readOnlyRootFilesystem"):
        flags += ["--read-only", "--read-only-tmpfs=false"]
    if csc.get("allowPrivilegeEscalation") is False:
        flags += ["--security-opt", "no-new-privileges"]
    for cap in csc.get("capabilities", {}).get("drop", []):
        flags += ["--cap-drop", cap]
    for e in c.get("env", []):
        flags += ["-e", f"{e['name']}={e['value']}"]
    limits = c["resources"]["limits"]
    flags += ["--cpus", str(float(limits["cpu"]))]
    mem = limits["memory"]
    flags += ["--memory", mem[:-2] + {"Mi": "m", "Gi": "g"}[mem[-2:]]]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for m in c.get("volumeMounts", []):
        v = volumes[m["name"]]
        check(set(v) == {"name", "emptyDir"}, f"volume {v}: only emptyDir is translated")
        # The kubelet makes an emptyDir writable by the pod's user (0777).
        # podman 4.3 gives a tmpfs over an image directory that directory's
        # mode (here 0700) whatever tmpfs-mode says, so: owned by the user.
        flags += ["--mount", f"type=tmpfs,destination={m['mountPath']},U=true"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for p in ports.values():
        flags += ["-p", f"127.0.0.1::{p}"]
    return flags, c["args"], ports, c, pod["terminationGracePeriodSeconds"]


def container_as_kubernetes_runs_it(cs, deployment, audio):
    flags, args, ports, c, grace = k8s_flags(deployment)
    name = cs.start("k8s", [*flags, IMAGE, *args])
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = c[kind]["httpGet"]
        port = ports.get(get["port"], get["port"])
        wait_http(f"http://127.0.0.1:{host_port(name, port)}{get['path']}")
    url = f"http://127.0.0.1:{host_port(name, next(iter(ports.values())))}"
    with session() as s, open(audio["mp3"], "rb") as f:
        r = s.post(url + "/v1/classify", files={"file": ("song.mp3", f, "audio/mpeg")},
                   timeout=120)
    check(r.status_code == 200, f"classify: {r.status_code} {r.text[:300]}")
    wisdom_saved(lambda: logs(name), "with a read-only root and an emptyDir")
    status = podman("exec", name, "cat", "/proc/1/status").stdout
    check(re.search(r"^CapEff:\s*0+$", status, flags=re.M) and
          re.search(r"^NoNewPrivs:\s*1$", status, flags=re.M),
          f"capabilities or NoNewPrivs not as the Deployment says:\n{status}")
    stop_exits_zero(name, grace)


def container_with_tls(cs, work, health_cmd):
    tls = work / "tls"
    shutil.rmtree(tls, ignore_errors=True)
    tls.mkdir()
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=genred.example", "-keyout", tls / "key.pem", "-out", tls / "cert.pem"])
    (tls / "key.pem").chmod(0o644)  # a throwaway key the container's user must read
    name = cs.start("tls", ["-v", f"{tls}:/tls:ro", "-e", "GENRED_TLS_CERT_FILE=/tls/cert.pem",
                            "-e", "GENRED_TLS_KEY_FILE=/tls/key.pem", IMAGE])
    poll("HEALTHCHECK over HTTPS",
         lambda: podman("healthcheck", "run", name, ok=False).returncode == 0, START_TIMEOUT_S)
    # The same command where nothing listens must fail.
    r = podman("exec", "-e", "GENRED_PORT=1", "-e", "GENRED_OPS_PORT=1", name, "sh", "-c",
               health_cmd, ok=False)
    check(r.returncode != 0, "the HEALTHCHECK passed with nothing listening")
    stop_exits_zero(name, STOP_TIMEOUT_S)
    shutil.rmtree(tls, ignore_errors=True)


# --- systemd -------------------------------------------------------------------

SYSTEMD_CONTAINERFILE = """\
FROM {image}
USER root
RUN apt-get update \\
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \\
       systemd systemd-sysv dbus libnss-systemd \\
    && apt-get clean && rm -rf /var/lib/apt/lists/*
"""


class Machine:
    """The image's root filesystem booted by systemd-nspawn."""

    def __init__(self, work):
        self.dir = work / "systemd"
        self.root = self.dir / "root"
        self.pidfile = self.dir / "nspawn.pid"
        self.proc = None
        self.leader = None

    def stop_stale(self):
        """An nspawn of a run that was killed before it could clean up."""
        with contextlib.suppress(OSError, ValueError):
            pid = int(self.pidfile.read_text())
            if str(self.root).encode() in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGTERM)
                poll("a stale systemd-nspawn to exit", lambda: not os.path.exists(f"/proc/{pid}"),
                     60)
        self.pidfile.unlink(missing_ok=True)

    def prepare(self, image_id, audio):
        self.stop_stale()
        self.remove_root()
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "Containerfile").write_text(SYSTEMD_CONTAINERFILE.format(image=image_id))
        podman("build", "--format", "docker", "--pull=never", "--network", "host",
               "-t", SYSTEMD_IMAGE, "-f", self.dir / "Containerfile", self.dir, timeout=600)
        name = f"{PREFIX}-export"
        podman("create", "--name", name, SYSTEMD_IMAGE)
        try:
            self.root.mkdir()
            exp = subprocess.Popen(["podman", "export", name], stdout=subprocess.PIPE)
            try:
                run(["tar", "-C", self.root, "--numeric-owner", "-x"], stdin=exp.stdout,
                    timeout=300)
            finally:
                exp.stdout.close()
                exp.wait(timeout=60)
            check(exp.returncode == 0, "podman export failed")
        finally:
            podman("rm", "-f", name, ok=False)
        shutil.copy(audio["mp3"], self.root / "root" / "song.mp3")

    def boot(self):
        self.log = open(self.dir / "nspawn.log", "w")
        # --capability=CAP_IPC_LOCK: nspawn's own seccomp filter refuses
        # mlock() to every process in a container without it, which a
        # service on a real host may call (see systemd/genred.service.in).
        self.proc = subprocess.Popen(
            ["systemd-nspawn", "-b", "-D", str(self.root), "--register=no", "--keep-unit",
             "--console=pipe", "--private-network", "--capability=CAP_IPC_LOCK",
             f"--machine={PREFIX}"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)
        self.pidfile.write_text(str(self.proc.pid))

        def leader():
            check(self.proc.poll() is None, f"systemd-nspawn exited: {self.log_text()}")
            for path in glob.glob(f"/proc/{self.proc.pid}/task/*/children"):
                for pid in open(path).read().split():
                    if open(f"/proc/{pid}/comm").read().strip() == "systemd":
                        return int(pid)
            return None
        self.leader = poll("systemd as the container's PID 1", leader, 60)
        poll("systemd's private socket",
             lambda: os.path.exists(f"/proc/{self.leader}/root/run/systemd/private"), 60)
        state = self.sh("systemctl", "is-system-running", "--wait", ok=False, timeout=120)
        if state.stdout.strip() != "running":
            failed = self.sh("systemctl", "--failed", "--no-legend", ok=False).stdout
            log(f"    system state {state.stdout.strip()!r}; failed units: {failed.strip()}")
            check(state.stdout.strip() == "degraded" and "genred" not in failed,
                  f"boot: {state.stdout}{state.stderr}")

    def log_text(self):
        return (self.dir / "nspawn.log").read_text(errors="replace")[-3000:]

    def sh(self, *argv, ok=True, timeout=60):
        return run(["nsenter", "-t", self.leader, "-a", *argv], ok=ok, timeout=timeout)

    def show(self, *props):
        out = self.sh("systemctl", "show", "genred", *[f"--property={p}" for p in props]).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self):
        return self.sh("journalctl", "-b", "-u", "genred", "-o", "cat", "--no-pager").stdout

    def shutdown(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()  # nspawn: the container's systemd powers off
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                if self.leader:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.leader, signal.SIGKILL)
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.log.close()
        self.proc = None
        self.pidfile.unlink(missing_ok=True)

    def remove_root(self):
        shutil.rmtree(self.root, ignore_errors=True)


def proc_status(m, pid):
    text = m.sh("cat", f"/proc/{pid}/status").stdout
    return dict(re.findall(r"^(\w+):\s*(.*)$", text, flags=re.M))


def limits_enforced(m, s):
    """MemoryMax= and TasksMax= in the kernel where the unified cgroup tree
    has the controllers (cgroup v2); on cgroup v1 ("hybrid", as on the
    machines this was written on) systemd in a container gets no memory or
    pids hierarchy, so they are only reported."""
    where = "/sys/fs/cgroup/system.slice/genred.service"
    r = m.sh("cat", f"{where}/memory.max", f"{where}/pids.max", ok=False)
    if r.returncode != 0:
        cgroups = m.sh("cat", f"/proc/{s['MainPID']}/cgroup").stdout
        log(f"    MemoryMax={s['MemoryMax']} TasksMax={s['TasksMax']} set but not enforced here: "
            f"no memory or pids controller on the unified tree ({' '.join(cgroups.split())})")
        return
    check(r.stdout.split() == [s["MemoryMax"], s["TasksMax"]],
          f"cgroup memory.max, pids.max {r.stdout.split()} vs {s['MemoryMax']} {s['TasksMax']}")


def systemd_runs_the_unit(m, reference):
    unit = m.show("FragmentPath")["FragmentPath"]
    check(unit in ("/lib/systemd/system/genred.service", "/usr/lib/systemd/system/genred.service"),
          f"genred.service is not the image's: {unit}")
    m.sh("systemctl", "start", "genred", timeout=START_TIMEOUT_S + 30)
    # Type=notify: `systemctl start` returns, and the unit is active, only
    # after READY=1 (sent once the model is loaded and the port bound).
    s = m.show("Type", "ActiveState", "SubState", "MainPID", "MemoryMax", "TasksMax")
    check(s["Type"] == "notify" and (s["ActiveState"], s["SubState"]) == ("active", "running"),
          f"after start: {s}\n{m.journal()[-2000:]}")
    pid = s["MainPID"]
    health = m.sh("curl", "-fsS", "http://127.0.0.1:8080/healthz").stdout
    check(json.loads(health).get("status") == "ok", health)
    ans = json.loads(m.sh("curl", "-fsS", "-F", "file=@/root/song.mp3",
                          "http://127.0.0.1:8080/v1/classify", timeout=120).stdout)
    check_answer(ans, reference["mp3"], "classify under systemd")

    st = proc_status(m, pid)
    uid = int(st["Uid"].split()[0])
    check(uid in DYNAMIC_UIDS, f"main process runs as uid {uid}, not a dynamic user")
    name = m.sh("getent", "passwd", str(uid)).stdout.split(":")[0]
    passwd = (m.root / "etc" / "passwd").read_text()
    check(name == "genred" and not re.search(rf"^[^:]*:[^:]*:{uid}:", passwd, flags=re.M) and
          not re.search(r"^genred:", passwd, flags=re.M),
          f"uid {uid} ({name}) is not systemd's dynamic user genred")
    check(st["Seccomp"] == "2" and st["NoNewPrivs"] == "1", f"seccomp/NoNewPrivs: {st}")
    caps = {k: v for k, v in st.items() if k.startswith("Cap")}
    check(caps and all(int(v, 16) == 0 for v in caps.values()), f"capabilities: {caps}")

    journal = m.journal()
    check("insecure memory" not in journal, f"libgcrypt warned:\n{journal[-2000:]}")
    saved = wisdom_saved(m.journal, "under systemd")
    check(saved["path"] == "/var/cache/genred/fftw-wisdom",
          f"plan saved at {saved['path']}, not in CacheDirectory=")

    m.sh("systemctl", "reload", "genred", timeout=60)
    poll("the model reloaded", lambda: [e for e in events(m.journal(), "reload")
                                        if e.get("what") == "model" and e.get("status") == "ok"],
         30)
    after = m.show("MainPID", "ActiveState")
    check(after == {"MainPID": pid, "ActiveState": "active"}, f"after reload: {after} (was {pid})")

    out = m.sh("systemd-analyze", "security", "genred", "--no-pager").stdout
    score = float(re.search(r"Overall exposure level for genred\.service: ([0-9.]+)", out).group(1))
    log(f"    systemd-analyze security genred: {score}")
    check(score <= MAX_EXPOSURE, f"exposure {score} > {MAX_EXPOSURE}:\n{out[-3000:]}")
    limits_enforced(m, s)

    m.sh("systemctl", "stop", "genred", timeout=90)
    s = m.show("ActiveState", "Result", "ExecMainStatus")
    check(s == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"},
          f"after stop: {s}\n{m.journal()[-2000:]}")


# --- main ------------------------------------------------------------------------

def make_audio(shared, work):
    blues = sorted((shared / "data" / "gtzan16k" / "blues").glob("*.flac"))
    check(blues, f"no GTZAN excerpts in {shared}/data/gtzan16k/blues")
    mp3 = work / "song.mp3"
    run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", blues[0],
         "-ar", "44100", "-ac", "2", "-c:a", "libmp3lame", "-b:a", "192k", mp3])
    return {"mp3": mp3, "flac": blues[0]}


def reference_answers(genred, audio):
    out = {}
    for kind, path in audio.items():
        r = run([genred, "classify", "--config", SOURCE / "conf" / "genred.conf", path],
                timeout=120, cwd=SOURCE)
        out[kind] = json.loads(r.stdout.splitlines()[0])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=pathlib.Path, default=SOURCE / "build" / "ops")
    ap.add_argument("--genred", type=pathlib.Path, default=SOURCE / "build" / "genred",
                    help="the binary CI tested, whose answers the image must give")
    ap.add_argument("--shared", type=pathlib.Path, default=SOURCE.parent / "shared")
    a = ap.parse_args()
    why = cannot_run()
    if why:
        log(f"SKIP: {why}")
        return SKIP

    def interrupted(signum, frame):
        raise Interrupted(f"signal {signum}")
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, interrupted)

    work = a.work.resolve()
    phases = Phases()
    cs = Containers()
    machine = Machine(work)
    try:
        need_tools()
        check(os.access(a.genred, os.X_OK), f"{a.genred} missing: build it first (.ci/build build)")
        podman_env(work)
        for stale in podman("ps", "-a", "--format", "{{.Names}}").stdout.split():
            if stale.startswith("genred-test-"):
                podman("rm", "-f", stale, ok=False)
        deployment = yaml.safe_load((SOURCE / "deploy" / "k8s" / "deployment.yaml").read_text())
        audio = make_audio(a.shared, work)
        reference = reference_answers(a.genred, audio)
        with phases("base images (debootstrap, import)"):
            make_bases(work)
        with phases("podman build docker/Dockerfile"):
            # The build stage tagged too, so that the final prune keeps it
            # as the next run's cache.
            out = ""
            for target, tag in (("build", BUILD_STAGE), ("runtime", IMAGE)):
                r = podman("build", "--format", "docker", "--pull=never", "--network", "host",
                           "-f", SOURCE / "docker" / "Dockerfile", "--target", target,
                           "-t", tag, SOURCE, timeout=1200)
                out += r.stdout + r.stderr
            (work / "build.log").write_text(out)
            steps = re.findall(r"STEP \d+/\d+:", out)
            log(f"    {out.count('Using cache')} of {len(steps)} steps from the cache "
                f"(log: {work / 'build.log'})")
            log(f"    image {IMAGE}: {image_size_mb(IMAGE):.0f} MB "
                f"(base {image_size_mb(BASES[1]):.0f} MB)")
            health_cmd = check_image(IMAGE, deployment)
        with phases("container as docker runs it"):
            container_as_docker_runs_it(cs, audio, reference)
        with phases("container as the Kubernetes Deployment runs it"):
            container_as_kubernetes_runs_it(cs, deployment, audio)
        with phases("container with TLS"):
            container_with_tls(cs, work, health_cmd)
        cs.remove_all()
        with phases("systemd root filesystem"):
            image_id = podman("image", "inspect", "--format", "{{.Id}}", IMAGE).stdout.strip()
            machine.prepare(image_id, audio)
        with phases("systemd boot and genred.service"):
            machine.boot()
            systemd_runs_the_unit(machine, reference)
        log(f"PASS: {phases.summary()}")
        return 0
    except (Failed, Interrupted) as e:
        log(f"FAIL: {e}")
        for n in cs.names:
            log(f"--- log of {n}:\n{logs(n)[-3000:]}")
        if machine.proc is not None:
            log(f"--- systemd-nspawn:\n{machine.log_text()}")
        return 1
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # finish cleaning up
        cs.remove_all()
        machine.shutdown()
        machine.remove_root()
        podman("image", "prune", "-f", ok=False, timeout=300)


if __name__ == "__main__":
    sys.exit(main())
