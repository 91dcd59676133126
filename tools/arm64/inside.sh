# Runs inside the arm64 root (check.sh): installs the runtime the way a Raspberry Pi does — `pip install`
# of the source, aarch64 wheels, no torch or onnx — then compares with the x86 reference in /check.
set -eu
[ -n "${PIP_CERT:-}" ] || unset PIP_CERT
VENV=/opt/moedge-venv
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
echo "arm64: pip install moedge from source (aarch64 wheels; the first time downloads them)"
"$VENV/bin/pip" install --quiet --disable-pip-version-check -c /opt/moedge-src/constraints.txt /opt/moedge-src
echo "arm64: $(uname -m) (qemu's $QEMU_CPU), installed: $(du -sh "$VENV"/lib/python3*/site-packages | cut -f1) in site-packages"
cd /tmp
exec "$VENV/bin/python" /opt/moedge-src/tools/arm64/compare.py /check
