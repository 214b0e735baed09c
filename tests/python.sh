#!/usr/bin/env bash
# The Python part of `make test`: the Python client's tests (clients/python/tests) and the
# checks of the OpenAPI document (tests/python), with pytest, against the debug binary that
# `cargo test` just built.
#
# The tools come from tests/python-requirements.txt, installed once into target/python (a
# virtual environment; `make clean` or `rm -rf target/python` starts over). Needs python3
# 3.9 or newer with its venv module; missing, it stops at once naming what to install.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if ! "$python" -c 'import sys, venv; sys.exit(sys.version_info < (3, 9))' 2>/dev/null; then
  echo "tests/python.sh: needs python3 (3.9 or newer) with venv; run: sudo apt-get install python3 python3-venv" >&2
  exit 1
fi

env_dir=target/python
stamp="$env_dir/.requirements"
if ! cmp -s tests/python-requirements.txt "$stamp" 2>/dev/null; then
  rm -rf "$env_dir"
  "$python" -m venv "$env_dir"
  "$env_dir/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/python-requirements.txt
  cp tests/python-requirements.txt "$stamp"
fi

"${CARGO:-cargo}" build --locked --quiet
export LEASEHOLD_BIN="$PWD/target/debug/leasehold"
suites=()
for dir in tests/python clients/python/tests; do
  if compgen -G "$dir/test_*.py" >/dev/null; then
    suites+=("$dir")
  fi
done
if ((${#suites[@]} == 0)); then
  echo "tests/python.sh: no Python tests" >&2
  exit 1
fi
# Each suite's own rootdir, so two conftest.py files never meet.
for dir in "${suites[@]}"; do
  "$env_dir/bin/python" -m pytest -q -p no:cacheprovider --rootdir "$dir" "$dir"
done
