#!/bin/sh
# `make check-arm64`: the runtime on aarch64 (a Debian arm64 root under qemu-user, see make_root.sh) against
# this machine, on bundles exported here (reference.py), compared inside the root (inside.sh, compare.py).
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
WORK=${ARM64_WORK:-$REPO/build/arm64-check}
CPU=${ARM64_CPU:-cortex-a76}  # the CPU qemu emulates: a Raspberry Pi 5's (cortex-a72: a Pi 4's; max: every feature)

ROOT=$("$HERE/make_root.sh")
"$PYTHON" "$HERE/reference.py" "$WORK"

echo "check-arm64: copying the source (tracked and new files) into $ROOT/opt/moedge-src"
SRC=$ROOT/opt/moedge-src
rm -rf "$SRC"
mkdir -p "$SRC" "$ROOT/check"
(cd "$REPO" && git ls-files -z -co --exclude-standard | tar --null --ignore-failed-read -T - -cf -) | tar -C "$SRC" -xf -
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
CERT=""
if [ -n "${PIP_CERT:-}" ]; then  # a machine whose pip trusts its own CA bundle: the root's pip needs it too
    cp "$PIP_CERT" "$ROOT/etc/moedge-pip-ca.crt"
    CERT=/etc/moedge-pip-ca.crt
fi

# A private mount namespace: the mounts go away with the check, however it ends.
unshare --mount --propagation private sh -eu -c '
    mount -t proc proc "$1/proc"
    mount --rbind /dev "$1/dev"
    mount --bind "$2" "$1/check"
    exec chroot "$1" /usr/bin/env -i HOME=/root PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 PIP_CERT="$3" \
        QEMU_CPU="$4" sh -eu /opt/moedge-src/tools/arm64/inside.sh' sh "$ROOT" "$WORK" "$CERT" "$CPU"
