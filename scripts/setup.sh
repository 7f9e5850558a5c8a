#!/usr/bin/env bash
# Idempotent set-up of .venv: torch 2.13.0 (CPU build) first and pinned, then requirements.txt.
# Quick (a hash check) when requirements.txt and this script are unchanged since the last run.
set -euo pipefail
cd "$(dirname "$0")/.."

stamp=.venv/.setup-stamp
wanted=$(cat requirements.txt scripts/setup.sh pyproject.toml | sha256sum | cut -d' ' -f1)
if [[ -f $stamp && $(cat "$stamp") == "$wanted" ]]; then
  exit 0
fi

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "setup: Python 3.11 is required (Triton's Python backend stub is built for it); set PYTHON=..." >&2
  exit 1
fi
command -v java >/dev/null || { echo "setup: TorchServe needs Java 17 (java not on PATH)" >&2; exit 1; }
# Triton's Python backend stub links libpython3.11.so.1.0: this interpreter's own when it is a shared build
# (scripts/serving/servers.py puts it first on the library path), else the system's.
shared=$("$python" -c 'import sysconfig; print(sysconfig.get_config_var("Py_ENABLE_SHARED") or 0)')
if [[ $shared != 1 ]] && ! ldconfig -p | grep -q 'libpython3.11.so.1.0'; then
  echo "setup: installing libpython3.11 for Triton's Python backend stub"
  if [[ $(id -u) == 0 ]]; then apt-get update -qq && apt-get install -y -qq libpython3.11; else sudo apt-get install -y libpython3.11; fi
fi

[[ -x .venv/bin/python ]] || "$python" -m venv .venv
echo "setup: installing torch==2.13.0 and requirements.txt into .venv (about a minute on a fresh machine)"
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
# The `maas` command for this checkout. Not `pip install -e .`: that would put `handlers` on the venv's path, and
# the archives must prove they carry their own copy (TorchServe and Triton run their models with this Python).
root=$(pwd)
cat > .venv/bin/maas <<SH
#!/usr/bin/env bash
# maas-handlers CLI for the checkout in $root (written by scripts/setup.sh)
exec "$root/.venv/bin/python" -c 'import sys; sys.path.insert(0, sys.argv.pop(1)); from scripts.cli import main; sys.exit(main())' "$root" "\$@"
SH
chmod +x .venv/bin/maas
.venv/bin/python -c "import torch, numpy, ts, tritonclient.grpc.model_config_pb2, pytriton" # fails loudly if an install failed
.venv/bin/maas --help >/dev/null
echo "$wanted" > "$stamp"
echo "setup: .venv ready"
