#!/bin/sh
# Builds a Debian arm64 root that runs under qemu-user (once: later calls reuse it) and prints its path.
# Needs root, debootstrap and qemu-user-static; registers qemu's aarch64 binfmt handler when it is missing.
set -eu
ROOT=${ARM64_ROOT:-$HOME/.cache/moedge/arm64-root}
SUITE=${ARM64_SUITE:-bookworm}
MIRROR=${ARM64_MIRROR:-http://deb.debian.org/debian}
APT_HINT="apt-get install debootstrap qemu-user-static"

die() { echo "check-arm64: error: $*" >&2; exit 2; }

[ "$(id -u)" = 0 ] || die "building and entering the arm64 root needs root (debootstrap, chroot, mount)"
command -v debootstrap >/dev/null || die "debootstrap is missing: $APT_HINT"
command -v qemu-aarch64-static >/dev/null || die "qemu-aarch64-static is missing: $APT_HINT"

# qemu-user-static registers itself through systemd-binfmt; containers often have neither mounted.
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    conf=/usr/lib/binfmt.d/qemu-aarch64.conf
    [ -e "$conf" ] || die "$conf is missing (qemu-user-static too old?): $APT_HINT"
    [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null \
        || die "cannot mount binfmt_misc to run aarch64 binaries (a container without it?)"
    cat "$conf" > /proc/sys/fs/binfmt_misc/register 2>/dev/null \
        || die "cannot register qemu-aarch64 with binfmt_misc"
fi

if [ -e "$ROOT/.moedge-root-complete" ]; then
    echo "check-arm64: arm64 root $ROOT (cached)" >&2
    echo "$ROOT"
    exit 0
fi

echo "check-arm64: building a Debian $SUITE arm64 root in $ROOT (several minutes, once)" >&2
mkdir -p "$(dirname "$ROOT")"
rm -rf "$ROOT.partial"
debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,ca-certificates,libgomp1 \
    "$SUITE" "$ROOT.partial" "$MIRROR" >&2 || die "debootstrap failed (log: $ROOT.partial/debootstrap/debootstrap.log)"
touch "$ROOT.partial/.moedge-root-complete"
rm -rf "$ROOT"
mv "$ROOT.partial" "$ROOT"
echo "$ROOT"
