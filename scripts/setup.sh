#!/usr/bin/env bash
# Create .venv and install rldiff with its dev extras. Idempotent: a second run with an unchanged
# pyproject.toml / constraints.txt only checks a stamp and returns in well under a second.
#   bash scripts/setup.sh            # uses python3 from PATH
#   PYTHON=python3.11 bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${RLDIFF_VENV:-.venv}"
stamp="$VENV/.rldiff-installed"
want="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
echo "[setup] creating $VENV and installing rldiff (first time: a few minutes)" >&2
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip uv 2>&1 | grep -v "is ignored: it is neither" >&2 || true
# torch first, pinned to the CPU wheel (a looser pin resolves a multi-GB CUDA build).
find_links=()
for d in /opt/wheels; do [[ -d "$d" ]] && find_links+=(--find-links "$d"); done
if "$VENV/bin/python" -m uv pip install --python "$VENV/bin/python" -q "${find_links[@]}" \
      -c constraints.txt torch==2.13.0 -e '.[dev]' >&2; then
  :
else
  echo "[setup] uv failed; falling back to pip" >&2
  "$VENV/bin/python" -m pip install -q torch==2.13.0 >&2
  "$VENV/bin/python" -m pip install -q -c constraints.txt -e '.[dev]' >&2
fi
echo "$want" > "$stamp"
echo "[setup] done: $VENV" >&2
