#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv with Python >= 3.12 and
# install lingjax with its test tools. Safe to run again: it only installs what changed.
#   bash launch/setup.sh            # from the repository root
# LINGJAX_PYTHON=/path/to/python3.12 picks the interpreter explicitly.
set -euo pipefail
cd "$(dirname "$0")/.."

is_py312() {  # true if "$1" runs and is Python >= 3.12
  "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1
}

find_python() {
  local c
  for c in "${LINGJAX_PYTHON:-}" python3.14 python3.13 python3.12 python3 python; do
    [ -n "$c" ] && is_py312 "$c" && { command -v "$c" || echo "$c"; return 0; }
  done
  # pyenv installs interpreters that its shims only expose when selected; look at them directly.
  for c in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[2-9]*/bin/python3; do
    [ -x "$c" ] && is_py312 "$c" && { echo "$c"; return 0; }
  done
  return 1
}

if [ ! -x .venv/bin/python ] || ! is_py312 .venv/bin/python; then
  if ! py=$(find_python); then
    echo "error: lingjax needs Python >= 3.12 (jax >= 0.11 does not support older Pythons)." >&2
    echo "Install one (e.g. 'pyenv install 3.12' or your OS package python3.12) and run again," >&2
    echo "or point LINGJAX_PYTHON at it: LINGJAX_PYTHON=/path/to/python3.12 bash launch/setup.sh" >&2
    exit 1
  fi
  echo "setup: creating .venv with $py ($("$py" --version))"
  rm -rf .venv
  "$py" -m venv .venv
fi

stamp=.venv/.lingjax-installed
want=$(cat pyproject.toml launch/constraints.txt | cksum)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -c launch/constraints.txt -e ".[dev]"
  echo "$want" > "$stamp"
fi
echo "setup: .venv ready ($(.venv/bin/python -c 'import jax; print("jax", jax.__version__)'))"
