"""Cost of one PrometheusSink.log call (a full trainer record) against the JSONL sink's.

    python tools/bench_metrics.py [--calls 20000]

Both sinks get the same record (the keys LogHook and the documented extras send). Prints
microseconds per call and the ratio to the JSONL baseline measured in the same run.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "helpers"))

from metrics_rank import record

from dist_face.metrics import JsonlSink
from dist_face.metrics.prometheus import PrometheusSink


def per_call_us(sink, calls: int) -> float:
    rec = record(0, 100)
    best = float("inf")
    for _ in range(3):  # best of 3: the machine is shared
        start = time.perf_counter()
        for step in range(calls):
            sink.log(rec, step)
        best = min(best, time.perf_counter() - start)
    return best / calls * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=20000)
    calls = p.parse_args().calls
    with tempfile.TemporaryDirectory() as tmp:
        jsonl = JsonlSink(Path(tmp) / "m.jsonl")
        base = per_call_us(jsonl, calls)
        jsonl.close()
    prom = PrometheusSink(rank=0, node=0, job="bench")
    ours = per_call_us(prom, calls)
    print(f"{'sink':<16}{'us/call':>10}{'ratio':>8}")
    print(f"{'JsonlSink':<16}{base:>10.1f}{1.0:>8.2f}")
    print(f"{'PrometheusSink':<16}{ours:>10.1f}{ours / base:>8.2f}")


if __name__ == "__main__":
    main()
