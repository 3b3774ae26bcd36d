"""Head checkpoints re-split by class range across world sizes; failures lose nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from dist_face.checkpoint import latest_checkpoint, list_checkpoints, restore_head, save_checkpoint
from dist_face.dist import Topology
from dist_face.heads import PartialFC
from dist_face.heads.sharded.row_optim import build_row_optimizer
from dist_face.heads.sharded.shard_math import class_range
from tests.helpers.distributed import run_distributed

C, D = 11, 4


class _Head(nn.Module):
    """A stand-in sharded head: a weight slice, a replicated buffer, a replicated parameter."""

    def __init__(self, rows: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(rows.clone())
        self.bias = nn.Parameter(torch.zeros(1))
        self.register_buffer("t", torch.zeros(()))


def _full() -> torch.Tensor:
    return torch.arange(C * D, dtype=torch.float32).reshape(C, D)


def _topology(rank: int, world: int) -> Topology:
    return Topology(rank=rank, world_size=world, local_rank=rank, local_world_size=world)


def _save(rank: int, world: int, run_dir: str, steps: list[int], fail_rank: int) -> list[str]:
    start, end = class_range(C, rank, world)
    head = _Head(_full()[start:end])
    opt = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9)
    head.weight.grad = torch.full_like(head.weight, 1.0)
    head.bias.grad = torch.ones(1)
    opt.step()  # momentum rows = grad rows
    head.t.fill_(7.0)
    out = []
    for step in steps:
        if rank == fail_rank and step == steps[-1]:

            def broken(*args, **kwargs):
                raise OSError(28, "No space left on device")

            torch_save, torch.save = torch.save, broken
        path = save_checkpoint(
            Path(run_dir),
            step,
            _topology(rank, world),
            replicated={"step": step},
            head=head,
            head_optimizer=opt,
            class_range=(start, end),
            num_classes=C,
            keep=2,
        )
        if rank == fail_rank and step == steps[-1]:
            torch.save = torch_save
        out.append(str(path))
    return out


def _load(rank: int, world: int, ckpt: str, saved_world: int) -> dict[str, torch.Tensor]:
    start, end = class_range(C, rank, world)
    head = _Head(torch.zeros(end - start, D))
    opt = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9)
    restore_head(Path(ckpt), _topology(rank, world), head, opt, (start, end), C, saved_world)
    return {
        "weight": head.weight.detach(),
        "momentum": opt.state[head.weight]["momentum_buffer"],
        "t": head.t,
        "bias": head.bias.detach(),
    }


@pytest.mark.parametrize(("saved", "loaded"), [(2, 3), (3, 2), (4, 1)])
def test_resplit_moves_every_row_to_its_new_owner(tmp_path, saved: int, loaded: int) -> None:
    run_distributed(_save, saved, str(tmp_path), [5], -1)
    ckpt = latest_checkpoint(tmp_path)
    assert ckpt is not None and ckpt.name == "step_00000005"
    expected_w = _full() - 0.1  # one SGD step with grad 1
    outs = [_load(r, loaded, str(ckpt), saved) for r in range(loaded)]
    for r, out in enumerate(outs):
        start, end = class_range(C, r, loaded)
        torch.testing.assert_close(out["weight"], expected_w[start:end], rtol=0, atol=0)
        torch.testing.assert_close(out["momentum"], torch.ones(end - start, D), rtol=0, atol=0)
        assert out["t"].item() == 7.0 and out["bias"].item() == pytest.approx(-0.1)


def test_keep_last_and_a_full_disk_loses_nothing(tmp_path) -> None:
    paths = run_distributed(_save, 2, str(tmp_path), [1, 2, 3, 4], 1)
    assert paths[0][:3] == [str(tmp_path / "checkpoints" / f"step_{s:08d}") for s in (1, 2, 3)]
    assert paths[0][3] == "None" and paths[1][3] == "None"  # rank 1's disk was full at step 4
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000002", "step_00000003"]
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))
    out = _load(0, 1, str(latest_checkpoint(tmp_path)), 2)
    torch.testing.assert_close(out["weight"], _full() - 0.1)


def _real_rows(head, opt) -> dict[str, torch.Tensor]:
    """Every row-sharded tensor of a PartialFC and its row-sparse optimizer, by name."""
    out = {n: p.detach().clone() for n, p in head.row_parameters().items()}
    for pname, p in head.row_parameters().items():
        for k, v in opt.state[p].items():
            out[f"{pname}/{k}"] = v.clone()
    for k, v in head.margin.state_dict().items():  # replicated margin state (AdaFace's μ, σ)
        out[f"margin/{k}"] = v.clone()
    return out


# the class bias; K = 3 sub-centers per class ([C_local, 3, D] rows); AdaFace's statistics
MARGINS = ("softmax", "subcenter_arcface", "adaface")


def _save_real(rank: int, world: int, run_dir: str, kind: str) -> dict[str, dict]:
    return {m: _save_margin(rank, world, f"{run_dir}/{m}", kind, m) for m in MARGINS}


def _save_margin(rank: int, world: int, run_dir: str, kind: str, margin: str) -> dict:
    head = PartialFC(D, C, margin, 0.5, seed=1)
    opt = build_row_optimizer(head, kind, 0.1, 0.01, 0.9)
    head.hand_rows_to(opt.sink)
    gen = torch.Generator().manual_seed(rank)
    for _ in range(3):  # rows sampled a different number of times (AdamW counts differ)
        head(torch.randn(2, D, generator=gen), torch.randint(0, C, (2,), generator=gen)).backward()
        opt.step()
    save_checkpoint(
        Path(run_dir),
        3,
        _topology(rank, world),
        replicated={"step": 3},
        head=head,
        head_optimizer=opt,
        class_range=(head.class_start, head.class_end),
        num_classes=C,
        keep=1,
    )
    return _real_rows(head, opt)


def _load_real(rank: int, world: int, run_dir: str, saved: int, kind: str) -> dict:
    out = {}
    for margin in MARGINS:
        head = PartialFC(D, C, margin, 0.5, seed=2)  # other initial values: all must be loaded
        opt = build_row_optimizer(head, kind, 0.1, 0.01, 0.9)
        crange = (head.class_start, head.class_end)
        ckpt = latest_checkpoint(Path(run_dir) / margin)
        restore_head(ckpt, _topology(rank, world), head, opt, crange, C, saved)
        out[margin] = _real_rows(head, opt)
    return out


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_class_bias_and_row_sparse_state_resplit_exactly(tmp_path, kind: str) -> None:
    """The softmax margin's class bias, sub-center ArcFace's K centers per class, AdaFace's
    statistics and the sparse optimizer's rows (momentum, AdamW's moments and per-row step
    counts) come back on another world size, bit for bit."""
    saved = run_distributed(_save_real, 3, str(tmp_path), kind)
    loaded = run_distributed(_load_real, 2, str(tmp_path), 3, kind)
    for margin in MARGINS:
        for key in saved[0][margin]:
            if key.startswith("margin/"):  # replicated: every rank holds the same value
                assert all(torch.equal(ld[margin][key], saved[0][margin][key]) for ld in loaded)
                continue
            full = torch.cat([s[margin][key] for s in saved])
            again = torch.cat([ld[margin][key] for ld in loaded])
            assert torch.equal(again, full), (margin, key)
