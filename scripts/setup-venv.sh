#!/usr/bin/env bash
# The virtualenv (`make venv`): creates VENV (default .venv) and installs the three distributions into it.
# make runs it under the set-up lock, so it checks the stamp again: a make that waited finds the work done.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${1:-.venv}"
STAMP="$VENV/.kubefit-installed"
SOURCES=(pyproject.toml sandbox/pyproject.toml trainer/pyproject.toml)

stamp_is_current() {
  local source
  [ -f "$STAMP" ] || return 1
  for source in "${SOURCES[@]}"; do [ "$STAMP" -nt "$source" ] || return 1; done
}

if stamp_is_current; then
  echo "==> virtualenv $VENV: installed by another make meanwhile"
  exit 0
fi
# An interrupted creation leaves bin/python without pip: only a working pip counts as a virtualenv.
if ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
  echo "==> creating virtualenv $VENV"
  python3 -m venv --clear "$VENV"
fi
echo "==> pip install -e '.[dev,torch]' -e ./sandbox -e ./trainer into $VENV: a minute or two; where no"
echo "    local torch wheel is found, pip downloads torch (hundreds of MiB or more) and shows its progress"
"$VENV/bin/python" -m pip install --disable-pip-version-check --progress-bar on \
  -e '.[dev,torch]' -e ./sandbox -e ./trainer
touch "$STAMP"
