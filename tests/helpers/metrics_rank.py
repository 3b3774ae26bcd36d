"""A stand-in rank for the Prometheus tests: logs trainer-like records through PrometheusSink.

    python tests/helpers/metrics_rank.py RANK JOB

Serves its metrics on a free loopback port, prints that port, then logs a record every 0.2 s
(5 steps each) until killed. Rank r reports 100·(r+1) samples/s; the global rate is the sum
over ``WORLD`` ranks.
"""

import sys
import time

from dist_face.metrics.prometheus import PrometheusSink, start_exporter

WORLD = 2
STEPS_PER_LOG = 5


def rate(rank: int) -> float:
    return 100.0 * (rank + 1)


def record(rank: int, step: int) -> dict[str, float]:
    rates = [rate(r) for r in range(WORLD)]
    return {
        "train/loss": 20.0 / (1 + step / 100),
        "train/lr": 0.1,
        "train/loss_scale": 65536.0,
        "train/skipped_steps": step // 50,
        "train/grad_norm": 2.0,
        "train/samples_per_s": sum(rates),
        "train/rank_samples_per_s": rate(rank),
        "train/rank_samples_per_s_min": min(rates),
        "train/rank_samples_per_s_max": max(rates),
        "time/data_wait_share": 0.1,
        "time/step_s": 0.04,
        "time/data_wait_s": 0.004,
        "time/forward_s": 0.012,
        "time/backward_s": 0.016,
        "time/head_comm_s": 0.005,
        "time/optimizer_s": 0.003,
        "progress/epoch": step // 100,
        "progress/total_steps": 10_000,
        "progress/eta_s": (10_000 - step) * 0.04,
        "data/corrupt_records": step // 200,
        "memory/rss_bytes": 1.5e9 + 1e6 * rank,
    }


def main() -> None:
    rank, job = int(sys.argv[1]), sys.argv[2]
    sink = PrometheusSink(rank=rank, node=0, job=job, info={"recipe": "simulated"})
    exporter = start_exporter(sink, "127.0.0.1", 0)
    print(exporter.port, flush=True)
    step = 0
    while True:
        step += STEPS_PER_LOG
        sink.log(record(rank, step), step)
        if step % 100 == 0 and rank == 0:
            sink.log({"eval/val/accuracy": min(0.5 + step / 1000, 0.99)}, step)
        time.sleep(0.2)


if __name__ == "__main__":
    main()
