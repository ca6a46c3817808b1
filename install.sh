#!/usr/bin/env bash
# Installs qrun into ./.venv. Run as root on Debian/Ubuntu it first installs the system
# packages qrun and its tests use; as another user it only checks for them.
#
# The venv is built from the system Python (/usr/bin/python3): the stub runs that same
# interpreter on execution hosts, where a Python kept under your home directory (pyenv,
# conda) would be hidden from it.
set -euo pipefail
cd "$(dirname "$0")"

PKGS="python3 python3-venv python3-dev gcc make libc6-dev util-linux iproute2 iptables
      busybox-static procps strace openssh-server openssh-client slurm-wlm munge
      golang-go musl-tools sqlite3 lmdb-utils git tmux proot sshfs libtalloc2"

missing=""
for p in $PKGS; do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "install.sh: installing system packages:$missing" >&2
        # Keep Debian from starting the stock sshd, munged and Slurm daemons: qrun's tests
        # run their own, and a user installing qrun did not ask for them.
        made_policy=""
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
            chmod +x /usr/sbin/policy-rc.d
            made_policy=1
            trap 'rm -f /usr/sbin/policy-rc.d' EXIT  # also when apt-get fails
        fi
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
        [ -z "$made_policy" ] || rm -f /usr/sbin/policy-rc.d
    else
        echo "install.sh: missing system packages:$missing (install them as root)" >&2
    fi
fi

PY=/usr/bin/python3
[ -x "$PY" ] || PY="$(command -v python3)"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'

# Every qrun command starts two interpreters (home and stub), so their start-up is part of
# every job's. setuptools' editable finder costs each of them about 8 ms before any code
# runs; a directory of links on sys.path gives the same `qrun.*` packages through Python's
# plain path search. The folders are linked whole, so a new module needs no reinstall.
SITE="$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
ROOT="$(pwd -P)"   # (resolved, as the console script's path is: a symlink may not exist elsewhere)
LINKS="$ROOT/.venv/qrun-import"
rm -rf "$LINKS"
mkdir -p "$LINKS/qrun"
# (the folders and their package names as pyproject.toml maps them for pip: one list)
FOLDERS="$(.venv/bin/python -c 'import tomllib
for name, folder in tomllib.load(open("pyproject.toml", "rb"))["tool"]["setuptools"]["package-dir"].items():
    print(name.removeprefix("qrun."), folder)')"
while read -r name folder; do
    ln -s "$ROOT/$folder" "$LINKS/qrun/$name"
done <<< "$FOLDERS"
echo '"""qrun: transparent remote execution."""' > "$LINKS/qrun/__init__.py"
# Byte-code is compiled now, so that start-up does not compile sources when the environment
# says not to write byte-code (PYTHONDONTWRITEBYTECODE) or the tree is not the user's.
# (-q: only errors are printed, and they stop the install.)
.venv/bin/python -m compileall -q $(cut -d' ' -f2 <<< "$FOLDERS") "$LINKS"
rm -f "$SITE"/__editable__.qrun_runtime-*.pth "$SITE"/__editable___qrun_runtime_*_finder.py
echo "$LINKS" > "$SITE/qrun-import.pth"
echo "install.sh: qrun is installed in $(pwd)/.venv (run .venv/bin/qrun)" >&2
