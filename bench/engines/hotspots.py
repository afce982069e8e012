"""Hot spots from py-spy's raw (collapsed) stacks, recorded with ``--native``.

Samples where the process only waits (epoll, a thread blocked on its queue or a lock)
are dropped; the rest are "busy". Self time goes to the innermost Python frame (native
frames below it, e.g. sqlite3 or a socket write, count for it), and the native leaves
are listed on their own (``gc_collect_main`` is the garbage collector).
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^)]*?)(?::\d+)?\)$")
_WAITS = (
    "epoll_pwait",
    "epoll_wait",
    "_queue_SimpleQueue_get",
    "PyThread_acquire_lock_timed",
    "select (",
    "poll (",
    "nanosleep",
)


def _split(frame: str) -> tuple[str, bool]:
    """A readable name, and whether the frame is Python code."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip(), False
    path = m["file"]
    is_python = path.endswith(".py") or path.startswith(("<string>", "<frozen"))
    for marker in ("site-packages/", "/work/main/", "python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{m['func']} ({path})", is_python


def summarise(path: Path, top: int = 15) -> str:
    own: Counter[str] = Counter()
    native: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    busy = idle = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        if any(w in stack for w in _WAITS):
            idle += n
            continue
        frames = [_split(f) for f in stack.split(";") if f]
        frames = [f for f in frames if not f[0].startswith(("process ", "thread "))]
        if not frames:
            continue
        busy += n
        python = [name for name, is_py in frames if is_py]
        own[python[-1] if python else frames[-1][0]] += n
        if not frames[-1][1]:
            native[frames[-1][0]] += n
        for name in set(python):
            inclusive[name] += n
    if not busy:
        return "  (no busy samples)"
    lines = [f"  {busy} busy samples ({idle} waiting ones dropped); self time by Python function:"]
    lines += [f"  {100 * n / busy:5.1f}%  {f}" for f, n in own.most_common(top)]
    lines.append("  native leaves:")
    lines += [f"  {100 * n / busy:5.1f}%  {f}" for f, n in native.most_common(8)]
    lines.append("  inclusive (the function or anything it called):")
    lines += [f"  {100 * n / busy:5.1f}%  {f}" for f, n in inclusive.most_common(top + 20)]
    return "\n".join(lines)


if __name__ == "__main__":
    print(summarise(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 15))
