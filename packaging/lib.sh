# Shell helpers for scripts/build-deb.sh and scripts/build-image.sh (sourced, not run).

# The host's Debian mirror for a suite, as apt itself resolved its sources (deb822 or
# one-line): the build reads it at run time and never writes a host name into the repo.
debian_mirror() {
    local suite=$1 url
    url=$(apt-get indextargets --format '$(REPO_URI) $(CODENAME) $(TARGET_OF)' 2>/dev/null |
        awk -v suite="$suite" '$2 == suite && $3 == "deb" { print $1; exit }')
    [ -n "$url" ] || { echo "no Debian mirror for $suite in the host's apt sources (run apt-get update)" >&2; return 1; }
    echo "$url"
}

# Debian's architecture name -> qemu's, e.g. arm64 -> aarch64.
qemu_arch() {
    case "$1" in
    arm64) echo aarch64 ;;
    armhf) echo arm ;;
    amd64) echo x86_64 ;;
    *) echo "unknown architecture $1" >&2; return 1 ;;
    esac
}

# Run foreign binaries through qemu-user-static: register the binfmt_misc handler from
# the qemu package's own description, with the F flag (the kernel opens the interpreter
# now, so it also works inside a chroot or a container that lacks it). Needs root.
binfmt_enable() {
    local arch name spec magic mask interp
    arch=$(qemu_arch "$1")
    [ "$arch" = "$(uname -m)" ] && return 0
    name=qemu-$arch
    spec=/usr/share/binfmts/$name
    [ -r "$spec" ] || { echo "$spec missing: apt-get install qemu-user-static" >&2; return 1; }
    [ -e /proc/sys/fs/binfmt_misc/register ] ||
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    if [ -e "/proc/sys/fs/binfmt_misc/$name" ]; then
        grep -q '^flags:.*F' "/proc/sys/fs/binfmt_misc/$name" && return 0
        echo -1 >"/proc/sys/fs/binfmt_misc/$name" # registered without F: useless in a chroot
    fi
    magic=$(awk '$1 == "magic" { print $2 }' "$spec")
    mask=$(awk '$1 == "mask" { print $2 }' "$spec")
    interp=$(readlink -f "/usr/bin/$name-static")
    echo ":$name:M:0:$magic:$mask:$interp:FP" >/proc/sys/fs/binfmt_misc/register
}
