"""Checkpoint manifests against real damaged files: the manifest written at save, the newest
checkpoint that verifies, rotation, the launchers' check before the ranks start, and
``dist-face-verify`` on a checkpoint folder."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from dist_face.checkpoint import (
    CheckpointCorrupt,
    latest_checkpoint,
    list_checkpoints,
    read_manifest,
    save_checkpoint,
    verify_checkpoint,
)
from dist_face.cli.verify import main as verify_main
from dist_face.config.schema import HeadConfig
from dist_face.dist import Topology
from dist_face.heads import build_head
from tests.helpers.damage import DAMAGES, damage
from tests.unit.test_preflight import run_main  # noqa: F401 (fixture)

FILES = {
    "head": "head-00000-of-00001.pt",
    "rank": "rank-00000.pt",
    "state": "state.pt",
    "manifest": "manifest.json",
}
REASONS = {  # what the one line says for each damage of a data file
    "flip": "sha256 mismatch",
    "truncate": "(truncated?)",
    "empty": "0 bytes",
}


def _save(run_dir: Path, step: int, num_classes: int = 10, keep: int = 5) -> Path:
    head = build_head(HeadConfig(), 8, num_classes)
    opt = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9)
    path = save_checkpoint(
        run_dir,
        step,
        Topology(),
        replicated={"step": step, "backbone": {"w": torch.full((4096,), float(step))}},
        head=head,
        head_optimizer=opt,
        class_range=(0, num_classes),
        num_classes=num_classes,
        keep=keep,
    )
    assert path is not None
    return path


def test_the_manifest_lists_every_file_with_its_size_and_sha256(tmp_path: Path) -> None:
    ckpt = _save(tmp_path, 1)
    body = json.loads((ckpt / "manifest.json").read_text())
    assert sorted(body["files"]) == sorted(n for n in FILES.values() if n != "manifest.json")
    for name, entry in body["files"].items():
        data = (ckpt / name).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert body["shards"] == {FILES["head"]: [0, 10]}
    assert read_manifest(ckpt).step == 1 and read_manifest(ckpt).world_size == 1
    verify_checkpoint(ckpt)


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("kind", list(FILES))
def test_a_damaged_checkpoint_is_named_and_never_the_latest(
    tmp_path: Path, kind: str, how: str
) -> None:
    older, newest = _save(tmp_path, 1), _save(tmp_path, 2)
    damage(newest / FILES[kind], how)
    with pytest.raises(CheckpointCorrupt) as err:
        verify_checkpoint(newest)
    assert err.value.path.name == FILES[kind]
    if kind == "manifest":
        assert "manifest" in err.value.reason, err.value.reason
    else:
        assert REASONS[how] in err.value.reason, err.value.reason
    assert latest_checkpoint(tmp_path) == older  # passed over, never counted as latest


def test_rotation_keeps_the_newest_verified_checkpoint(tmp_path: Path) -> None:
    _save(tmp_path, 1, keep=2)
    damage(_save(tmp_path, 2, keep=2) / FILES["state"], "flip")
    just_written = _save(tmp_path, 3, keep=1)  # hashed back from the disk when written
    assert list_checkpoints(tmp_path) == [just_written]
    assert latest_checkpoint(tmp_path) == just_written


def test_dist_face_verify_checks_a_run_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    good, bad = _save(tmp_path, 1), _save(tmp_path, 2)
    assert verify_main([str(good)]) == 0
    assert f"{good}: ok (step 1, 3 files" in capsys.readouterr().out
    damage(bad / FILES["head"], "flip")
    assert verify_main([str(tmp_path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{good}: ok")
    assert out[1] == f"{bad}: BAD {FILES['head']}: sha256 mismatch (contents changed)"
    assert out[2] == "2 checkpoints checked, 1 bad"
    assert verify_main([str(tmp_path / "checkpoints")]) == 1


def _checked(small_dataset: Path, out: Path, *extra: str) -> list[str]:
    return [
        f"--data.root={small_dataset}/shards",
        "--eval.targets=[]",
        f"--output_root={out}",
        "--name=r",
        "--check-only",
        *extra,
    ]


def test_the_check_before_start_verifies_what_the_ranks_will_read(
    run_main,  # noqa: F811
    small_dataset: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    run_dir = tmp_path / "r"
    older, newest = _save(run_dir, 1, num_classes=60), _save(run_dir, 2, num_classes=60)
    damage(newest / FILES["rank"], "truncate")
    # auto: the newest is passed over, with its file named; the older one will be resumed
    assert run_main(*_checked(small_dataset, tmp_path, "--resume=auto")) == (0, [])
    said = [r.getMessage() for r in caplog.records if "passed over" in r.getMessage()]
    assert len(said) == 1 and FILES["rank"] in said[0] and newest.name in said[0], said
    # an explicit damaged checkpoint: one line, exit 2
    code, errors = run_main(*_checked(small_dataset, tmp_path, f"--resume={newest}"))
    assert code == 2 and len(errors) == 1, errors
    assert errors[0].startswith(f"bad configuration: checkpoint.resume: {newest} does not verify")
    assert FILES["rank"] in errors[0]
    # none verifies: refused rather than started over on top of them
    damage(older / FILES["head"], "flip")
    code, errors = run_main(*_checked(small_dataset, tmp_path, "--resume=auto"))
    assert code == 2 and len(errors) == 1, errors
    assert "none of the 2 checkpoints" in errors[0] and "--overwrite" in errors[0]
