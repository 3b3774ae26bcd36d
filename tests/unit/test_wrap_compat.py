"""DDP wrapping on a torch whose DDP predates ``forward_sync_buffers`` (torch 2.11 and older)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dist_face.config import DistConfig
from dist_face.dist import Topology
from dist_face.train import wrap

pytestmark = [
    pytest.mark.unit,
    pytest.mark.filterwarnings("ignore:`broadcast_buffers` is deprecated:FutureWarning"),
]


class OldDDP(DistributedDataParallel):
    """DDP with torch 2.11's constructor signature: no ``forward_sync_buffers``."""

    def __init__(
        self,
        module,
        device_ids=None,
        output_device=None,
        dim=0,
        broadcast_buffers=True,
        process_group=None,
        bucket_cap_mb=None,
        find_unused_parameters=False,
        check_reduction=False,
        gradient_as_bucket_view=False,
        static_graph=False,
    ):
        self.seen_broadcast_buffers = broadcast_buffers
        super().__init__(
            module,
            device_ids=device_ids,
            output_device=output_device,
            dim=dim,
            broadcast_buffers=broadcast_buffers,
            process_group=process_group,
            bucket_cap_mb=bucket_cap_mb,
            find_unused_parameters=find_unused_parameters,
            check_reduction=check_reduction,
            gradient_as_bucket_view=gradient_as_bucket_view,
            static_graph=static_graph,
        )


@pytest.fixture
def one_rank_group():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_keywords_follow_the_signature() -> None:
    assert wrap.buffer_sync_kwargs(OldDDP) == {"broadcast_buffers": False}
    if "forward_sync_buffers" in wrap._ddp_keywords(DistributedDataParallel):
        assert wrap.buffer_sync_kwargs(DistributedDataParallel) == {"forward_sync_buffers": False}


def test_wrap_works_without_forward_sync_buffers(one_rank_group, monkeypatch) -> None:
    monkeypatch.setattr(wrap, "DistributedDataParallel", OldDDP)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    topology = Topology(rank=0, world_size=2, local_world_size=2)  # any W > 1 wraps
    ddp = wrap.wrap_backbone(model, DistConfig(), topology, torch.device("cpu"))
    assert isinstance(ddp, OldDDP)
    assert ddp.seen_broadcast_buffers is False  # buffers not re-broadcast every forward
    loss = ddp(torch.randn(6, 4)).square().mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
