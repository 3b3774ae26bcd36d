"""A full trainer-like metrics record: every key the Prometheus sink maps, with plausible values.

``tools/bench_metrics.py`` times the sinks on it. It includes the keys the trainer does not send
yet (the step phases), so the cost measured is that of the complete table. Rank r reports
100·(r+1) samples/s; the global rate is the sum over ``WORLD`` ranks.
"""

WORLD = 2


def rate(rank: int) -> float:
    """This rank's samples per second."""
    return 100.0 * (rank + 1)


def record(rank: int, step: int) -> dict[str, float]:
    """The record rank ``rank`` would log at ``step``."""
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
