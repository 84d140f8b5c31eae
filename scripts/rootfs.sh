#!/usr/bin/env bash
# A Debian rootfs with systemd for tests/system/test_system_service.py, built once with
# debootstrap (about 3 minutes) and kept in a cache outside the checkout; later calls
# reuse it. Prints the rootfs path. The cache key is a hash of the suite and the package
# list: change either and a new rootfs is built beside the old one.
#   sudo scripts/rootfs.sh [CACHE_DIR]     (default /var/cache/edge-defender-test)
# The mirror is the host's own Debian mirror, read from its apt sources.
set -euo pipefail

cache=${1:-/var/cache/edge-defender-test}
suite=bookworm
packages=systemd,dbus,python3,python3-venv,iproute2,procps
key=$(printf '%s %s\n' "$suite" "$packages" | sha256sum | cut -c1-12)
root=$cache/rootfs-$suite-$key

[ "$(id -u)" -eq 0 ] || { echo "rootfs.sh: debootstrap needs root" >&2; exit 1; }
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9 # a second test run waits for the first build instead of racing it
if [ -e "$root/.complete" ]; then
    echo "$root"
    exit 0
fi

# The host's Debian mirror: the URIs of the deb822 stanza (or the one-line `deb` entry)
# for $suite, else the first one that is not the security archive.
mirror() {
    local sources=(/etc/apt/sources.list.d/*.sources) lists=(/etc/apt/sources.list /etc/apt/sources.list.d/*.list)
    {
        for f in "${sources[@]}"; do if [ -r "$f" ]; then cat "$f" && printf '\n\n'; fi; done |
            awk -v suite="$suite" 'BEGIN { RS = "" } {
                uri = ""; exact = 0; other = 0
                n = split($0, lines, "\n")
                for (i = 1; i <= n; i++) {
                    if (lines[i] ~ /^URIs:/) { split(lines[i], f, /[ \t]+/); uri = f[2] }
                    if (lines[i] ~ /^Suites:/) {
                        m = split(lines[i], s, /[ \t]+/)
                        for (j = 2; j <= m; j++) { if (s[j] == suite) exact = 1; else if (s[j] !~ /-security$/) other = 1 }
                    }
                }
                if (uri != "" && exact) print 0, uri
                else if (uri != "" && other) print 1, uri
            }'
        for f in "${lists[@]}"; do if [ -r "$f" ]; then cat "$f"; fi; done |
            sed -e 's/\[[^]]*\]//' | awk -v suite="$suite" '$1 == "deb" {
                if ($3 == suite) print 0, $2; else if ($3 !~ /-security$/) print 1, $2 }'
    } | sort -s -k1,1n | awk 'NR == 1 { print $2 }'
}
url=$(mirror)
[ -n "$url" ] || { echo "rootfs.sh: no Debian mirror found in /etc/apt/sources*" >&2; exit 1; }

tmp=$root.partial
cleanup() {
    # debootstrap mounts /proc and /sys in the target; a failed run may leave them.
    findmnt -rn -o TARGET | grep -F "$tmp/" | sort -r | xargs -r umount -l || true
    rm -rf "$tmp"
}
trap cleanup EXIT
cleanup
echo "rootfs.sh: debootstrap $suite from $url into $root (about 3 minutes, once)" >&2
debootstrap --include="$packages" "$suite" "$tmp" "$url" >"$cache/debootstrap.log" 2>&1 || {
    tail -n 30 "$cache/debootstrap.log" >&2
    exit 1
}
chroot "$tmp" apt-get clean
touch "$tmp/.complete"
mv "$tmp" "$root"
echo "$root"
