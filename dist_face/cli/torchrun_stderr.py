"""torchrun's stderr as ``launch/torchrun.sh`` shows it: one line for the agent's stop traceback.

A SIGTERM (or SIGUSR1, SIGINT…) to the torchrun agent is forwarded to the ranks, which stop at
the same step, write their checkpoint and exit 75; the agent then dies of its own
``SignalException`` with a 20-line traceback that reads like a crash. This filter passes every
line through as it comes (rank logs included), holds back a traceback until its last line, and
replaces it by one line when that last line is the agent's ``SignalException``; any other
traceback is passed through whole. It ignores the stop signals itself, so the ranks' last
lines still reach the log.
"""

from __future__ import annotations

import re
import signal
import sys

_SIGNAL = re.compile(r"SignalException: Process (\d+) got signal: (\d+)")


def summary(last_line: str) -> str | None:
    """The one line replacing the traceback that ends with ``last_line``, or None to keep it."""
    found = _SIGNAL.search(last_line)
    if found is None:
        return None
    number = int(found.group(2))
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = f"signal {number}"
    return (
        f"torchrun: stopped by {name} (agent {found.group(1)}); the ranks' lines above say where "
        "each stopped and whether its checkpoint was written; RESUME=auto continues the run\n"
    )


def main() -> int:
    """Filter stdin to stdout until end of file."""
    for sig in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1"):
        signal.signal(getattr(signal, sig), signal.SIG_IGN)
    held: list[str] = []
    out = sys.stdout
    for line in sys.stdin:
        if not held and line.startswith("Traceback (most recent call last):"):
            held.append(line)
            continue
        if held and line[:1] in (" ", "\t"):
            held.append(line)
            continue
        if held:
            short = summary(line)
            out.write(short if short is not None else "".join(held) + line)
            held = []
        else:
            out.write(line)
        out.flush()
    out.write("".join(held))
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
