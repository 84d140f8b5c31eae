#!/usr/bin/env bash
# Build dist/edge-defender_VERSION_{arm64,amd64}.deb from this checkout, on any
# architecture, without root. Each package bundles a virtual environment in
# /opt/edge-defender: the agent's wheel built from this tree and the pinned dependencies
# of packaging/requirements.txt as the target's own wheels (manylinux, CPython 3.11 =
# Debian bookworm's python3.11), byte-compiled; plus the config as a conffile and the
# maintainer scripts of packaging/debian. Plain dpkg-deb (docs/deploy.md says why).
#   scripts/build-deb.sh [--arch arm64|amd64]... [--version V] [--out DIR] [--cache DIR]
#                        [--compression xz|gzip]
# xz (default) makes the smallest packages; gzip is 5x faster to build and ~40% larger
# (the tests use it: if the gzip package fits the size budget, the xz one does).
# Dependency wheels are downloaded once per (architecture, requirements) into CACHE
# (default ~/.cache/edge-defender-build); later builds are offline but for the build
# backend (setuptools), which pip caches itself. PYTHON: a Python 3.11 with pip
# (default .venv/bin/python, else python3); it builds the wheel and compiles the bytecode.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)

arches=() version="" compression=xz out=$here/dist cache=${XDG_CACHE_HOME:-$HOME/.cache}/edge-defender-build
while [ $# -gt 0 ]; do
    case "$1" in
    --arch) arches+=("$2"); shift 2 ;;
    --version) version=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --cache) cache=$2; shift 2 ;;
    --compression) compression=$2; shift 2 ;;
    *) echo "usage: $0 [--arch arm64|amd64]... [--version V] [--out DIR] [--cache DIR] [--compression xz|gzip]" >&2; exit 2 ;;
    esac
done
[ ${#arches[@]} -gt 0 ] || arches=(arm64 amd64)
python=${PYTHON:-}
[ -n "$python" ] || { [ -x "$here/.venv/bin/python" ] && python=$here/.venv/bin/python; } || python=python3
pyver=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$pyver" = 3.11 ] || { echo "build-deb.sh: $python is Python $pyver; the bytecode must be 3.11's (set PYTHON)" >&2; exit 1; }
[ -n "$version" ] || version=$("$python" -c 'import ast, sys
tree = ast.parse(open(sys.argv[1]).read())
print(next(n.value.value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "__version__"))' "$here/agent/__init__.py")
case "$compression" in xz | gzip) ;; *) echo "build-deb.sh: --compression xz or gzip" >&2; exit 2 ;; esac
command -v dpkg-deb >/dev/null || { echo "build-deb.sh: dpkg-deb missing: apt-get install dpkg" >&2; exit 1; }

prefix=/opt/edge-defender
site=lib/python3.11/site-packages
requirements=$here/packaging/requirements.txt
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The agent's own wheel, from a copy of the tree (setuptools writes build/ and
# *.egg-info beside the sources).
mkdir -p "$work/src" "$work/project"
cp -r "$here/agent" "$here/pyproject.toml" "$here/README.md" "$work/src/"
find "$work/src" -name __pycache__ -prune -exec rm -rf {} +
# (setuptools' warnings about pyproject.toml go to a log, shown if the build fails)
"$python" -m pip wheel -q --no-deps -w "$work/project" "$work/src" 2>"$work/wheel.log" ||
    { cat "$work/wheel.log" >&2; exit 1; }
wheel=$(ls "$work"/project/*.whl)

for arch in "${arches[@]}"; do
    case "$arch" in
    arm64) platforms=(manylinux2014_aarch64 manylinux_2_28_aarch64) ;;
    amd64) platforms=(manylinux2014_x86_64 manylinux_2_28_x86_64) ;;
    *) echo "build-deb.sh: --arch $arch: arm64 or amd64 (armhf: see docs/deploy.md)" >&2; exit 2 ;;
    esac
    pip_target=(--only-binary=:all: --python-version 3.11 --implementation cp --abi cp311)
    for p in "${platforms[@]}"; do pip_target+=(--platform "$p"); done

    key=$(cat "$requirements" <(echo "${platforms[*]}") | sha256sum | cut -c1-12)
    wheels=$cache/wheels-$arch-$key
    if [ ! -d "$wheels" ]; then
        rm -rf "$wheels.partial"
        mkdir -p "$cache"
        "$python" -m pip download -q "${pip_target[@]}" -d "$wheels.partial" -r "$requirements"
        mv "$wheels.partial" "$wheels"
    fi

    stage=$work/$arch
    venv=$stage$prefix
    mkdir -p "$venv/bin" "$venv/$site"
    "$python" -m pip install -q --no-index --find-links "$wheels" "${pip_target[@]}" \
        --no-compile --target "$venv/$site" -c "$requirements" "$wheel"
    # pip --target leaves scripts for the build host's Python: the venv gets its own.
    rm -rf "$venv/$site/bin"
    # The wheel's path on the build host, which differs every build and means nothing on
    # the device.
    for record in "$venv/$site"/edge_defender-*.dist-info; do
        rm "$record/direct_url.json"
        sed -i '/direct_url\.json/d' "$record/RECORD"
    done
    # The venv as `python3 -m venv` makes it on the device, with Debian's interpreter.
    ln -s /usr/bin/python3.11 "$venv/bin/python3"
    ln -s python3 "$venv/bin/python"
    ln -s lib "$venv/lib64"
    printf 'home = /usr/bin\ninclude-system-site-packages = false\nversion = 3.11\n' >"$venv/pyvenv.cfg"
    cat >"$venv/bin/edge-defender" <<EOF
#!$prefix/bin/python3
import sys

from agent.cli import main

sys.exit(main())
EOF
    chmod 755 "$venv/bin/edge-defender"
    mkdir -p "$stage/usr/bin"
    ln -s "$prefix/bin/edge-defender" "$stage/usr/bin/edge-defender"
    # Bytecode now: /opt is read-only to the service (ProtectSystem=strict) and a Pi
    # would compile scapy on every start. checked-hash: valid whatever the files' times.
    "$python" -m compileall -q -j 0 --invalidation-mode checked-hash \
        -s "$stage" -p / "$venv/$site" >/dev/null

    # The config: a conffile, kept when changed. Modes as the tmpfiles.d entries; the
    # group (edge-defender) comes from install-service in postinst.
    install -d -m 0750 "$stage/etc/edge-defender"
    install -m 0640 "$here/agent/data/config.toml" "$stage/etc/edge-defender/config.toml"
    install -d -m 0755 "$stage/usr/share/doc/edge-defender"
    gzip -9n <"$here/README.md" >"$stage/usr/share/doc/edge-defender/README.md.gz"
    cp "$here/packaging/copyright" "$stage/usr/share/doc/edge-defender/copyright"

    install -d -m 0755 "$stage/DEBIAN"
    size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
    sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" \
        "$here/packaging/debian/control" >"$stage/DEBIAN/control"
    install -m 0644 "$here/packaging/debian/conffiles" "$stage/DEBIAN/"
    install -m 0755 "$here/packaging/debian/postinst" "$here/packaging/debian/prerm" \
        "$here/packaging/debian/postrm" "$stage/DEBIAN/"
    mkdir -p "$out"
    deb=$out/edge-defender_${version}_$arch.deb
    # Same tree, same bytes: every file dated as the last commit (or now, outside git).
    epoch=$(git -C "$here" log -1 --format=%ct 2>/dev/null || date +%s)
    find "$stage" -exec touch -h -d "@$epoch" {} +
    SOURCE_DATE_EPOCH=$epoch dpkg-deb --root-owner-group -Z"$compression" --build "$stage" "$deb" >/dev/null
    echo "$deb"
done
