#!/usr/bin/python3
"""music.py - unlabelled music for the student: free-licensed soundtracks
that Debian packages carry, fetched with apt at training time into a cache
outside the repository (never committed), and listed with their versions
for the model card.

    /usr/bin/python3 train/music.py fetch ~/.cache/genred-music [PACKAGE ...]

fetch runs `apt-get download` (no installation, no root needed beyond what
apt's lists need) and unpacks each .deb with `dpkg-deb -x` under DIR/PACKAGE/;
files() lists the audio in DIR, packages() what was fetched, with versions.
The teacher labels this music; no true genre is known, so the student
learns it only through the teacher (distill.py --unl-share).

What it does not do: decide whether the music helps (distill.py measures
it), render it (augment.py).
"""
import glob
import json
import os
import subprocess
import sys
import zipfile

PACKAGES = ("wesnoth-1.16-music", "warzone2100-music", "nexuiz-music", "ufoai-music",
            "fb-music-high")
AUDIO = (".ogg", ".mp3", ".flac", ".wav", ".opus", ".xm", ".mod", ".it", ".s3m")


def fetch(folder, packages=PACKAGES, log=print):
    os.makedirs(folder, exist_ok=True)
    debs = os.path.join(folder, "debs")
    os.makedirs(debs, exist_ok=True)
    for p in packages:
        target = os.path.join(folder, p)
        if os.path.exists(os.path.join(target, ".done")):
            continue
        have = glob.glob(os.path.join(debs, f"{p}_*.deb"))
        if not have:
            r = subprocess.run(["apt-get", "download", p], cwd=debs, capture_output=True,
                               text=True)
            if r.returncode != 0:
                raise SystemExit(f"apt-get download {p} failed: {r.stderr.strip()}\n"
                                 "  (run apt-get update first)")
            have = glob.glob(os.path.join(debs, f"{p}_*.deb"))
        deb = sorted(have)[-1]
        version = subprocess.run(["dpkg-deb", "-f", deb, "Version"], capture_output=True,
                                 text=True, check=True).stdout.strip()
        subprocess.run(["dpkg-deb", "-x", deb, target], check=True)
        # Quake-engine games keep their music in .pk3 (zip) archives.
        for pk3 in glob.glob(os.path.join(target, "**", "*.pk3"), recursive=True):
            with zipfile.ZipFile(pk3) as z:
                for m in z.namelist():
                    if m.lower().endswith(AUDIO):
                        z.extract(m, pk3 + ".d")
        with open(os.path.join(target, ".done"), "w") as f:
            json.dump({"name": p, "version": version, "deb": os.path.basename(deb)}, f)
        log(f"{p} {version}: {len(_audio(target))} audio files")


def _audio(root):
    out = []
    for d, _, names in os.walk(root):
        out += [os.path.join(d, n) for n in names if n.lower().endswith(AUDIO)]
    return sorted(out)


def packages(folder):
    out = []
    for done in sorted(glob.glob(os.path.join(folder, "*", ".done"))):
        with open(done) as f:
            out.append(json.load(f))
    return out


MIN_SECONDS = 30.0   # shorter files are jingles and stingers, not music to learn from


def duration(path):
    r = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of",
                        "csv=p=0", path], capture_output=True, text=True)
    try:
        return float(r.stdout.strip())
    except ValueError:
        return 0.0


def files(folder):
    """Every audio file of the fetched packages of at least MIN_SECONDS,
    sorted (durations are cached beside the files)."""
    out = []
    for p in packages(folder):
        cache = os.path.join(folder, p["name"], ".durations.json")
        known = {}
        if os.path.exists(cache):
            with open(cache) as f:
                known = json.load(f)
        found = _audio(os.path.join(folder, p["name"]))
        for f in found:
            if f not in known:
                known[f] = duration(f)
        with open(cache, "w") as f:
            json.dump(known, f)
        out += [f for f in found if known[f] >= MIN_SECONDS]
    if not out:
        raise SystemExit(f"{folder}: no fetched music (train/music.py fetch {folder})")
    return out


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "fetch":
        raise SystemExit(__doc__)
    fetch(sys.argv[2], tuple(sys.argv[3:]) or PACKAGES)
    print(json.dumps(packages(sys.argv[2])))
