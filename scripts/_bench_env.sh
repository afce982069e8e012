# Sourced by scripts/bench: make .venv-bench from requirements/bench.lock (idempotent, quiet
# when up to date). A venv of its own so the benchmark's peers (Celery, arq, SAQ,
# procrastinate) never enter the dev environment in .venv.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
BENCH_VENV="$ROOT/.venv-bench"

ensure_bench_venv() {
    local lock="$ROOT/requirements/bench.lock" stamp
    stamp="$BENCH_VENV/.copydesk-bench-$(sha256sum "$lock" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)"
    if [ -f "$stamp" ]; then return 0; fi
    if [ ! -x "$BENCH_VENV/bin/python" ]; then
        echo "==> creating $BENCH_VENV" >&2
        "$PY" -m venv "$BENCH_VENV"
    fi
    echo "==> installing locked bench dependencies (requirements/bench.lock)" >&2
    "$BENCH_VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$lock"
    "$BENCH_VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e "$ROOT"
    rm -f "$BENCH_VENV"/.copydesk-bench-*
    touch "$stamp"
}
