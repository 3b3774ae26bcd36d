"""Config drift on resume, through the trainer's entry point on a real checkpoint.

Each key that changes what is trained is refused with one line naming it (exit 2, nothing
written); ``--resume.allow_changes`` lets a named one through; each key meant to change on
resume is applied (the learning rate with the schedule re-based) and ``config.yaml`` records
what the resumed run used. The comparison itself works on either shape of the margin's
configuration (flat fields or a ``head.margin_args`` mapping).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from dist_face.checkpoint.drift import REFUSED, compare, rule
from dist_face.cli.pack import main as pack_main
from dist_face.train.entry import main
from dist_face.train.optim import lr_factor
from tests.unit.test_preflight import run_main  # noqa: F401 (fixture)

SAVED_AT = 2


def _base(data: Path, out: Path, steps: int = SAVED_AT) -> list[str]:
    return [
        f"--data.root={data}/shards",
        "--eval.targets=[]",
        f"--output_root={out}",
        "--name=r",
        f"--train.max_steps={steps}",
        "--train.log_every=1",
        "--data.num_workers=0",
        "--data.batch_size=16",
        "--checkpoint.every=1",
    ]


@pytest.fixture(scope="module")
def trained(small_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of 2 steps with checkpoints at steps 1 and 2 (the ``runs`` root)."""
    out = tmp_path_factory.mktemp("drift")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("dist_face.train.entry.init_logging", lambda rank: None)
        for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
            mp.delenv(var, raising=False)
        assert main(["--config", "debug_cpu", *_base(small_dataset, out)]) == 0
    return out


@pytest.fixture(scope="module")
def other_packing(small_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same images and classes packed into 3 shards: another data set fingerprint."""
    root = tmp_path_factory.mktemp("repacked")
    argv = [str(small_dataset / "train"), str(root / "shards"), "--shards", "3", "--seed", "1"]
    assert pack_main([*argv, "--shuffle"]) == 0
    return root


def _copy(trained: Path, tmp_path: Path) -> Path:
    shutil.copytree(trained, tmp_path / "runs")
    return tmp_path / "runs"


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("--model.embedding_size=32", "model.embedding_size"),
        ("--model.dropout=0.2", "model.dropout"),
        ("--head.margin=cosface", "head.margin"),
        ("--head.margin_args.margin=0.3", "head.margin_args.margin"),
        ("--head.margin_args.scale=16", "head.margin_args.scale"),
        ("--head.sample_rate=0.5", "head.sample_rate"),
        ("--train.precision=bf16", "train.precision"),
        ("--train.seed=7", "train.seed"),
        ("--optim.weight_decay=0.01", "optim.weight_decay"),
        ("--data.hflip=false", "data.hflip"),
        ("OTHER_PACKING", "data.root"),
    ],
)
def test_a_change_of_what_is_trained_is_refused_in_one_line(
    run_main,  # noqa: F811
    small_dataset: Path,
    other_packing: Path,
    trained: Path,
    tmp_path: Path,
    override: str,
    key: str,
) -> None:
    out = _copy(trained, tmp_path)
    args = _base(small_dataset, out, steps=4)
    if override == "OTHER_PACKING":
        args[0] = f"--data.root={other_packing}/shards"
        override = "--resume=auto"
    config_before = (out / "r" / "config.yaml").read_text()
    code, errors = run_main(*args, override, "--resume=auto")
    assert code == 2
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert errors[0].startswith("bad configuration: resuming "), errors
    assert f" {key} (" in errors[0] and f"--resume.allow_changes={key}" in errors[0], errors
    assert (out / "r" / "config.yaml").read_text() == config_before  # what the run used
    assert sorted(p.name for p in (out / "r" / "checkpoints").iterdir()) == [
        "step_00000001",
        "step_00000002",
    ]


def test_allow_changes_lets_a_named_change_through_and_config_yaml_records_it(
    run_main,  # noqa: F811
    small_dataset: Path,
    trained: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    out = _copy(trained, tmp_path)
    args = [*_base(small_dataset, out, steps=3), "--head.margin=cosface", "--resume=auto"]
    code, errors = run_main(*args, "--resume.allow_changes=head.margin")
    assert (code, errors) == (0, [])
    used = yaml.safe_load((out / "r" / "config.yaml").read_text())
    assert used["head"]["margin"] == "cosface"
    assert used["checkpoint"]["allow_changes"] == ["head.margin"]
    said = [r.getMessage() for r in caplog.records if "with changes" in r.getMessage()]
    assert len(said) == 1 and "head.margin 'arcface' -> 'cosface'" in said[0], said


def test_applied_changes_take_effect_and_config_yaml_records_them(
    run_main,  # noqa: F811
    small_dataset: Path,
    trained: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    out = _copy(trained, tmp_path)
    steps = 4
    args = _base(small_dataset, out, steps=steps)
    args[args.index("--data.batch_size=16")] = "--data.batch_size=8"
    changed = ["--optim.lr=0.5", "--train.log_every=2", "--eval.every=3", "--resume=auto"]
    code, errors = run_main(*args, *changed)
    assert (code, errors) == (0, [])
    said = [r.getMessage() for r in caplog.records if "with changes" in r.getMessage()]
    assert len(said) == 1, said
    for key in ("optim.lr", "data.batch_size", "train.log_every", "eval.every"):
        assert key in said[0], said
    assert "schedule re-based: " in said[0]
    used = yaml.safe_load((out / "r" / "config.yaml").read_text())
    assert used["optim"]["lr"] == 0.5 and used["data"]["batch_size"] == 8
    assert used["train"]["log_every"] == 2 and used["eval"]["every"] == 3
    # the learning rate the resumed steps used is the new one's schedule at those steps
    records = [
        yaml.safe_load(line)
        for line in (out / "r" / "metrics-rank0.jsonl").read_text().splitlines()
    ]
    resumed = [r for r in records if r.get("step", 0) > SAVED_AT and "train/lr" in r]
    assert [r["step"] for r in resumed] == [4]  # logged every 2 steps now
    want = 0.5 * lr_factor(steps, 0, steps, "poly", 1.0)
    assert resumed[0]["train/lr"] == pytest.approx(want)
    lines = [r.getMessage() for r in caplog.records]
    rebased = [m for m in lines if m.startswith("learning-rate schedule re-based at step 2")]
    assert rebased and "0.5" in rebased[0], lines


def test_the_margin_allowance_covers_its_arguments_in_either_config_shape() -> None:
    def tree(margin: str, **args: float) -> dict:
        return {"head": {"margin": margin, "margin_args": args, "sample_rate": 1.0}}

    saved = yaml.safe_dump(tree("arcface", m2=0.5))
    new = tree("cosface", m3=0.35)
    refused = compare(saved, new, []).refused
    assert sorted(refused) == ["head.margin", "head.margin_args.m2", "head.margin_args.m3"]
    drift = compare(saved, new, ["head.margin"])
    assert drift.refused == {} and sorted(drift.overridden) == sorted(refused)
    # the sample rate is not a margin argument
    new["head"]["sample_rate"] = 0.3
    assert list(compare(saved, new, ["head.margin"]).refused) == ["head.sample_rate"]
    # the flat shape of today's config: the per-margin fields are the margin's arguments
    flat = compare(
        yaml.safe_dump({"head": {"margin": "arcface", "m2": 0.5}}),
        {"head": {"margin": "cosface", "m3": 0.35}},
        ["head.margin"],
    )
    assert flat.refused == {} and sorted(flat.overridden) == ["head.m2", "head.m3", "head.margin"]
    assert rule("some_new_section.key") == REFUSED  # unknown keys change the training


def test_a_refusal_line_names_each_key_with_both_values() -> None:
    drift = compare(yaml.safe_dump({"optim": {"momentum": 0.9}}), {"optim": {"momentum": 0.8}}, [])
    assert "optim.momentum (0.9 -> 0.8)" in drift.refusal("step_00000002")
