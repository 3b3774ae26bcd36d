"""Curves from a run's metrics-rank*.jsonl (dist-face-report --run) and the TensorBoard sink."""

from __future__ import annotations

from pathlib import Path

import pytest

from dist_face.cli.report import main as report_main
from dist_face.config import MetricsConfig
from dist_face.dist import Topology
from dist_face.metrics.build import build_sinks
from dist_face.metrics.run_report import (
    CURVE_PANELS,
    RunReportError,
    load_run,
    panel_lines,
    panels_for,
)
from dist_face.metrics.sinks import JsonlSink
from dist_face.metrics.tensorboard import TensorBoardSink


def _write_run(
    run_dir: Path, ranks: int = 2, steps: int = 5, lr: float = 0.1, scale: float = 65536.0
) -> Path:
    for rank in range(ranks):
        sink = JsonlSink(run_dir / f"metrics-rank{rank}.jsonl")
        for step in range(1, steps + 1):
            sink.log(
                {
                    "train/loss": 10.0 / step,
                    "train/lr": lr * (1 - step / steps),
                    "train/loss_scale": scale,
                    "train/rank_samples_per_s": 100.0 + rank,
                    "time/data_wait_share": 0.1,
                },
                step,
            )
        sink.log({"eval/val/accuracy": 0.9, "eval/val/eer": 0.1}, steps)
        sink.close()
    return run_dir


def test_load_run_reads_every_rank_and_metric(tmp_path: Path) -> None:
    run = load_run(_write_run(tmp_path / "a"))
    assert sorted(run.series) == [0, 1]
    assert run.get("train/loss") == [(s, 10.0 / s) for s in range(1, 6)]
    assert run.get("train/rank_samples_per_s", rank=1)[0] == (1, 101.0)
    assert run.get("eval/val/accuracy") == [(5, 0.9)]


def test_half_written_last_line_is_skipped_but_a_bad_middle_line_is_an_error(
    tmp_path: Path,
) -> None:
    run_dir = _write_run(tmp_path / "a", ranks=1)
    path = run_dir / "metrics-rank0.jsonl"
    with open(path, "a") as f:
        f.write('{"step": 6, "train/lo')  # killed while writing
    assert len(load_run(run_dir).get("train/loss")) == 5
    lines = path.read_text().splitlines()
    lines.insert(2, "not json")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(RunReportError, match=r"metrics-rank0\.jsonl:3: not a metrics record"):
        load_run(run_dir)


def test_report_compares_runs_on_one_png(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a, b = _write_run(tmp_path / "a"), _write_run(tmp_path / "b", lr=0.2)
    out = tmp_path / "curves.png"
    assert report_main(["--run", str(a), "--run", str(b), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(out) in capsys.readouterr().out


def test_report_on_a_directory_without_metrics_fails_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert report_main(["--run", str(tmp_path), "--out", str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{tmp_path}: no metrics-rank*.jsonl" in err[0]


def test_one_line_per_run_and_rank(tmp_path: Path) -> None:
    runs = [load_run(_write_run(tmp_path / n)) for n in ("a", "b")]
    drawn = {p.title: [label for label, *_ in panel_lines(p, runs)] for p in CURVE_PANELS}
    assert drawn["training loss"] == ["a", "b"]
    assert drawn["samples/s per rank"] == ["a rank 0", "a rank 1", "b rank 0", "b rank 1"]
    assert drawn["evaluation accuracy"] == ["a val", "b val"]
    assert panel_lines(CURVE_PANELS[0], runs[:1])[0][0] == ""  # one run: no legend needed


def test_an_fp32_run_draws_no_loss_scale_and_every_run_draws_its_eer(tmp_path: Path) -> None:
    fp32 = load_run(_write_run(tmp_path / "fp32", scale=1.0))  # no scaler: a constant 1
    fp16 = load_run(_write_run(tmp_path / "fp16"))
    titles = [p.title for p in panels_for([fp32])]
    assert "fp16 loss scale" not in titles and len(titles) == len(CURVE_PANELS) - 1
    assert "fp16 loss scale" in [p.title for p in panels_for([fp32, fp16])]
    eer = next(p for p in CURVE_PANELS if p.title == "evaluation EER")
    assert panel_lines(eer, [fp32]) == [("val", 0, [5], [0.1])]
    out = tmp_path / "curves.png"
    assert report_main(["--run", str(tmp_path / "fp32"), "--out", str(out)]) == 0


def _scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_tensorboard_sink_writes_scalars_tensorboard_reads_back(tmp_path: Path) -> None:
    sink = TensorBoardSink(tmp_path / "tb")
    for step in (10, 20):
        sink.log({"train/loss": 1.0 / step, "train/lr": 0.5}, step)
    sink.close()
    loss = _scalars(tmp_path / "tb", "train/loss")
    assert [step for step, _ in loss] == [10, 20]
    assert [value for _, value in loss] == pytest.approx([0.1, 0.05])  # float32 in the file
    assert [v for _, v in _scalars(tmp_path / "tb", "train/lr")] == [0.5, 0.5]


def test_tensorboard_is_a_sink_of_rank_0_only_when_enabled(tmp_path: Path) -> None:
    cfg = MetricsConfig(tensorboard=True)

    def names(rank: int) -> list[str]:
        topo = Topology(rank=rank, world_size=2, local_rank=rank, local_world_size=2)
        sink = build_sinks(cfg, topo, tmp_path / f"r{rank}")
        kinds = [type(s).__name__ for s in sink.sinks]
        sink.close()
        return kinds

    assert "TensorBoardSink" in names(0)
    assert "TensorBoardSink" not in names(1)
    off = build_sinks(MetricsConfig(), Topology(rank=0, world_size=1), tmp_path / "off")
    assert "TensorBoardSink" not in [type(s).__name__ for s in off.sinks]
    off.close()
