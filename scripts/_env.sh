# Sourced by the scripts here: makes .venv with the project and the extras in
# $EXTRAS, and adds .venv/bin to PATH.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
EXTRAS=${EXTRAS:-test,lint,docs,bench,backends}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=".venv/.installed-${EXTRAS//,/-}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[$EXTRAS]"
  touch "$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"
