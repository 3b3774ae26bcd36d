"""IJB embedding on several ranks: each embeds a slice, rank 0 gathers them in row order."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dist_face.data.synthetic.ijb import IJBSpec, generate_ijb
from dist_face.eval.ijb_embed import embed_ijb
from dist_face.eval.ijb_meta import IJBFormatError, read_ijb
from dist_face.models import create, load_backbone, save_backbone
from tests.helpers.distributed import run_distributed

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray]:
    tmp = tmp_path_factory.mktemp("ijb_dist")
    root = generate_ijb(
        tmp / "IJBB", IJBSpec(target="IJBB", identities=4, templates_per_identity=2), workers=2
    )
    torch.manual_seed(0)
    ckpt = save_backbone(
        create("tiny", embedding_size=8), tmp / "model.pt", "tiny", embedding_size=8
    )
    single = embed_ijb(load_backbone(ckpt), read_ijb(root, "IJBB"), batch_size=4, progress=False)
    return root, ckpt, single


def _embed(rank: int, world: int, root: str, ckpt: str) -> np.ndarray | None:
    return embed_ijb(load_backbone(ckpt), read_ijb(root, "IJBB"), batch_size=3, progress=False)


def _embed_broken(rank: int, world: int, root: str, ckpt: str) -> str:
    try:
        embed_ijb(load_backbone(ckpt), read_ijb(root, "IJBB"), batch_size=3, progress=False)
    except IJBFormatError as exc:
        return str(exc)
    return ""


def test_three_ranks_gather_the_single_process_features(setup) -> None:
    root, ckpt, single = setup
    assert len(single) % 3 != 0  # uneven slices
    out = run_distributed(_embed, 3, str(root), str(ckpt))
    assert out[1] is None and out[2] is None
    np.testing.assert_allclose(out[0], single, rtol=1e-5, atol=1e-6)


def test_an_unreadable_image_on_one_rank_stops_every_rank(setup, tmp_path: Path) -> None:
    import shutil

    root, ckpt, _ = setup
    broken = tmp_path / "IJBB"
    shutil.copytree(root, broken)
    last = read_ijb(broken, "IJBB").image_path(-1)  # in the last rank's slice
    last.write_bytes(b"not a jpeg")
    out = run_distributed(_embed_broken, 2, str(broken), str(ckpt))
    assert all(str(last) in msg and "unreadable image" in msg for msg in out)


def test_torchrun_cli_equals_single_process(setup, tmp_path: Path) -> None:
    root, ckpt, single = setup
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--standalone", "-m", "dist_face.cli.ijb",
        "--backbone", str(ckpt), "--image-path", str(root), "--target", "IJBB",
        "--out", str(tmp_path), "--no-progress", "--no-plot", "--batch-size", "5",
    ]  # fmt: skip
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "img_feats.npy"), single, rtol=1e-5, atol=1e-6)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["target"] == "IJBB" and set(report["identification_1n"]["galleries"]) == {
        "S1",
        "S2",
    }
