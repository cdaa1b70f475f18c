"""test_install.py - where genred finds its files, installed and in a checkout.

Installs the build tree under test into a temporary DESTDIR (the prefix the
tree was configured with, /usr/local by default, below it) and checks: the
binary, the model, the conf file, the systemd unit and genred(8) are in
their usual places; the installed conf file loads to exactly the built-in
defaults and its model is the installed model under the prefix; the unit and
the man page name the installed paths; the installed binary classifies real
audio with the installed model and conf file, and, run inside the checkout,
still reads no conf file and looks for its model under its prefix only.

The binary in the build folder is a checkout's: with no flags, no
GENRED_CONFIG and from any working directory, it reads the checkout's
conf/genred.conf and model; a copy of it elsewhere does not. A model that
does not open is an error that names the conf file tried and where the
model path came from.

What it does not do: verify the unit with systemd (test_ops.py) or install
into the real prefix.
"""
import json
import os
import pathlib
import re
import shutil
import subprocess

import pytest

INSTALL_TIMEOUT_S = 120
RUN_TIMEOUT_S = 120


def run(argv, env=None, **kw):
    kw.setdefault("timeout", RUN_TIMEOUT_S)
    base = {k: v for k, v in os.environ.items() if not k.startswith("GENRED_")}
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                          env={**base, **(env or {})}, **kw)


@pytest.fixture(scope="module")
def dirs(build_root):
    """The install directories the tree was configured with, absolute."""
    r = run(["meson", "introspect", "--buildoptions", build_root])
    assert r.returncode == 0, r.stderr
    opts = {o["name"]: o["value"] for o in json.loads(r.stdout)}
    prefix = pathlib.PurePosixPath(opts["prefix"])
    d = {"prefix": prefix}
    for name in ("bindir", "datadir", "sysconfdir", "mandir"):
        d[name] = prefix / opts[name]  # an absolute value replaces the prefix
    d["unitdir"] = prefix / "lib" / "systemd" / "system"
    return d


@pytest.fixture(scope="module")
def destdir(build_root, tmp_path_factory):
    dest = tmp_path_factory.mktemp("destdir")
    r = run(["meson", "install", "-C", build_root, "--no-rebuild", "--quiet", "--destdir", dest],
            timeout=INSTALL_TIMEOUT_S)
    assert r.returncode == 0, f"meson install failed:\n{r.stdout}\n{r.stderr}"
    return dest


def under(destdir, path):
    return destdir / pathlib.PurePosixPath(path).relative_to("/")


@pytest.fixture(scope="module")
def installed(destdir, dirs):
    d = dirs
    return {
        "bin": under(destdir, d["bindir"] / "genred"),
        "model": under(destdir, d["datadir"] / "genred" / "models" / "gtzan-cnn.gmodel"),
        "conf": under(destdir, d["sysconfdir"] / "genred" / "genred.conf"),
        "unit": under(destdir, d["unitdir"] / "genred.service"),
        "man": under(destdir, d["mandir"] / "man8" / "genred.8"),
    }


def test_every_file_in_its_usual_place(installed, destdir, dirs, source_dir, model_path):
    for what, path in installed.items():
        assert path.is_file(), f"{what} not installed at {path}; installed: " \
            f"{sorted(str(p.relative_to(destdir)) for p in destdir.rglob('*') if p.is_file())}"
    assert os.access(installed["bin"], os.X_OK)
    assert installed["model"].read_bytes() == model_path.read_bytes()
    if str(dirs["prefix"]) == "/usr/local":  # meson's default: the layout the README names
        rel = {k: str(p.relative_to(destdir)) for k, p in installed.items()}
        assert rel == {"bin": "usr/local/bin/genred",
                       "model": "usr/local/share/genred/models/gtzan-cnn.gmodel",
                       "conf": "usr/local/etc/genred/genred.conf",
                       "unit": "usr/local/lib/systemd/system/genred.service",
                       "man": "usr/local/share/man/man8/genred.8"}, rel


def test_installed_conf_is_the_defaults_with_the_installed_model(installed, dirs, source_dir):
    model = str(dirs["datadir"] / "genred" / "models" / "gtzan-cnn.gmodel")
    checked = run([installed["bin"], "--check-config", installed["conf"]])
    assert checked.returncode == 0, checked.stderr
    defaults = run([installed["bin"], "--check-config", "/dev/null"])
    assert defaults.returncode == 0, defaults.stderr
    assert checked.stdout == defaults.stdout, "installed conf differs from the built-in defaults"
    assert f"\nmodel = {model}\n" in checked.stdout, checked.stdout

    # The installed file is the repository's, every comment kept, with only
    # the model line rewritten.
    repo = (source_dir / "conf" / "genred.conf").read_text().splitlines()
    inst = installed["conf"].read_text().splitlines()
    assert len(repo) == len(inst)
    differ = [(a, b) for a, b in zip(repo, inst) if a != b]
    assert differ == [("model = ../models/gtzan-cnn.gmodel", f"model = {model}")], differ


def test_unit_and_man_page_name_the_installed_paths(installed, dirs):
    unit = installed["unit"].read_text()
    assert not re.search(r"@[a-z]+@", unit), "unsubstituted @...@ in the unit"
    execs = re.findall(r"^ExecStart=(.*)$", unit, flags=re.M)
    assert execs == [f"{dirs['bindir']}/genred serve --config "
                     f"{dirs['sysconfdir']}/genred/genred.conf"], execs

    page = installed["man"].read_text()
    assert not re.search(r"@[a-z]+@", page), "unsubstituted @...@ in the man page"
    for path in (f"{dirs['bindir']}/genred", f"{dirs['sysconfdir']}/genred/genred.conf",
                 f"{dirs['unitdir']}/genred.service"):
        assert path.replace("-", "\\-") in page, f"man page does not name {path}"
    model = f"{dirs['datadir']}/genred/models/gtzan-cnn.gmodel"
    assert model.replace("-", "\\-") in page, f"man page does not name {model}"


def test_man_page_renders_without_warnings(installed):
    """groff with every warning on, as `man` would format it."""
    lint = run(["groff", "-t", "-man", "-ww", "-z", "-rCHECKSTYLE=3", installed["man"]])
    assert lint.returncode == 0 and lint.stderr == "", lint.stderr
    text = run(["groff", "-t", "-man", "-Tutf8", "-P", "-cbou", installed["man"]])
    assert text.returncode == 0, text.stderr
    plain = text.stdout
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "OPTIONS", "CONFIGURATION",
                    "HTTP API", "SIGNALS", "ENVIRONMENT", "FILES", "EXIT STATUS"):
        assert re.search(rf"^{section}$", plain, flags=re.M), f"no {section} section"
    words = " ".join(plain.split())  # justification doubles some spaces
    for command in ("serve", "classify", "features", "--check-config"):
        assert f"genred {command}" in words, f"SYNOPSIS lacks {command}"


def test_installed_binary_classifies_with_installed_files(installed, audio):
    """The installed conf over an installed model: only the model path moves
    into DESTDIR, as it would be at its real place."""
    r = run([installed["bin"], "classify", "--config", installed["conf"],
             "--model", installed["model"], audio.excerpt_wav])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 1, r.stdout
    ans = json.loads(lines[0])
    assert ans["chunks"] == 10 and ans["model"]["name"] == "gtzan-cnn", ans


def test_installed_binary_keeps_to_its_prefix(installed, dirs, source_dir, audio):
    """Run inside the checkout it was built from, the installed binary still
    reads no conf file and takes the model under its prefix."""
    model = dirs["datadir"] / "genred" / "models" / "gtzan-cnn.gmodel"
    r = run([installed["bin"], "classify", audio.excerpt_wav], cwd=source_dir)
    if pathlib.Path(model).is_file():  # this machine has genred installed: that model serves
        assert r.returncode == 0, r.stderr
    else:
        assert r.returncode == 1, r.stdout
        assert f"genred: cannot open the model {model}: No such file" in r.stderr, r.stderr
        assert "tried no conf file" in r.stderr and "installed under its prefix" in r.stderr
    assert str(source_dir) not in r.stderr, r.stderr


# --- a checkout ----------------------------------------------------------------

def classified(r):
    assert r.returncode == 0, r.stderr
    (line,) = r.stdout.splitlines()
    ans = json.loads(line)
    assert ans["chunks"] == 10 and ans["model"]["name"] == "gtzan-cnn", ans
    return ans


@pytest.mark.parametrize("command", ["serve", "classify", "features"])
def test_help_after_a_command_prints_the_usage(genred_bin, command):
    for flag in ("--help", "-h"):
        r = subprocess.run([genred_bin, command, "--model", "/nonexistent", flag],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("genred ") and "usage:" in r.stdout
        assert f"genred {command}" in r.stdout
        assert r.stderr == ""


def test_an_option_value_spelled_like_help_is_a_value(genred_bin, audio, tmp_path):
    """`-o -h` and `--output --help` name output files; they do not ask for
    the usage."""
    for args in (["-o", "-h"], ["--output", "--help"]):
        r = run([genred_bin, "classify", *args, audio.excerpt_wav], cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert "usage:" not in r.stdout + r.stderr
        ans = json.loads((tmp_path / args[1]).read_text().splitlines()[0])
        assert ans["chunks"] == 10, ans


def test_checkout_binary_just_works(genred_bin, build_root, audio, tmp_path):
    """`build/genred classify song` with no flags, from the build folder, the
    checkout and anywhere else."""
    for cwd in (build_root, build_root.parent, tmp_path, "/"):
        classified(run([genred_bin, "classify", audio.excerpt_wav], cwd=cwd))


def test_checkout_binary_reads_the_checkouts_conf(genred_bin, source_dir, audio, tmp_path):
    """The error for a model that does not open names the conf file the
    checkout's binary read, and which layer named the model."""
    conf = source_dir / "conf" / "genred.conf"
    r = run([genred_bin, "classify", audio.excerpt_wav], cwd=tmp_path,
            env={"GENRED_MODEL": "/nonexistent/m.gmodel"})
    assert r.returncode == 1 and r.stdout == "", r.stdout
    assert r.stderr.splitlines() == [
        "genred: cannot open the model /nonexistent/m.gmodel: No such file or directory",
        f"genred: tried the conf file {conf} (the checkout's, read by a genred run from its "
        "build folder); the model path comes from GENRED_MODEL",
        "genred: name the model with --model PATH, GENRED_MODEL=PATH or `model = PATH` in a "
        "conf file"], r.stderr

    # A conf file of its own replaces the checkout's; its relative model
    # path names a file beside it.
    own = tmp_path / "etc" / "my.conf"
    own.parent.mkdir()
    own.write_text("model = ../models/none.gmodel\n")
    r = run([genred_bin, "classify", "--config", own, audio.excerpt_wav], cwd="/")
    assert r.returncode == 1
    assert r.stderr.splitlines()[:2] == [
        f"genred: cannot open the model {own.parent}/../models/none.gmodel: No such file or "
        "directory",
        f"genred: tried the conf file {own} (--config); the model path comes from the conf "
        "file's model line"], r.stderr
    (tmp_path / "models").mkdir()
    shutil.copyfile(source_dir / "models" / "gtzan-cnn.gmodel", tmp_path / "models" / "none.gmodel")
    classified(run([genred_bin, "classify", audio.excerpt_wav], cwd="/",
                   env={"GENRED_CONFIG": str(own)}))


def test_a_copy_of_the_binary_is_not_a_checkouts(genred_bin, dirs, audio, tmp_path):
    """Only the binary in its build folder reads the checkout: a copy
    elsewhere keeps to the prefix, as an installed one does."""
    copy = tmp_path / "genred"
    shutil.copyfile(genred_bin, copy)
    copy.chmod(0o755)
    model = dirs["datadir"] / "genred" / "models" / "gtzan-cnn.gmodel"
    r = run([copy, "classify", audio.excerpt_wav], cwd=tmp_path)
    if pathlib.Path(model).is_file():  # this machine has genred installed: that model serves
        classified(r)
        return
    assert r.returncode == 1
    assert r.stderr.splitlines()[:2] == [
        f"genred: cannot open the model {model}: No such file or directory",
        "genred: tried no conf file (none named by --config or $GENRED_CONFIG); the model "
        "path is the built-in default of a genred installed under its prefix"], r.stderr
