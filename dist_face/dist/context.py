"""The process groups of a run, built once at start-up and passed to whoever communicates.

A :class:`ParallelContext` holds:

* ``data_group``: the ranks over which the backbone is data-parallel (DDP's reducer, the
  overflow flag);
* ``class_group``: the ranks over which the class centers are sharded (the whole world by
  default; the head's all-gathers and softmax reductions);
* ``control_group``: a group for host-side control collectives (a checkpoint's success flag,
  plan agreement, early stop) on CPU tensors.

``None`` stands for the default group (or no group at all in a one-process run), which every
helper of :mod:`dist_face.dist.comm` accepts.

Why a cached gloo group for control, and not a mixed ``"cpu:gloo,cuda:nccl"`` backend: the
default group is not always ours to create. torchrun users, DeepSpeed's
``init_distributed`` and the test harness create it themselves, with whatever backend they
chose; a mixed backend would only hold when this package created it. A gloo group over the
same ranks (:func:`dist_face.dist.comm.control_group`) works whatever created the default
group, is built once here while every rank is at the same point of start-up, and is reused
by every later control collective. When the default group already serves CPU tensors (gloo,
or a mixed backend) it is used as is and no group is created. Control collectives carry a few
bytes a few times per run, so gloo's TCP transport costs nothing measurable.

One host collective does run every step: the all-gather of the loader's labels (``N = W·B``
int64), which Partial FC's exact sample needs on the host. A gloo all-gather is a ring of
``W − 1`` TCP hops, a barrier of every host process: milliseconds at W = 64, tens of them at
W = 512 (``tools/audit_step.py`` models it). It therefore runs one step ahead, beside the
step, on a worker thread and over a gloo group of its own
(:func:`dist_face.dist.comm.label_group`; :mod:`dist_face.heads.sharded.label_path`), never on the
control group, whose collectives the main thread issues. The step's own collectives
(embeddings, softmax statistics, gradients) stay on the device group.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.distributed import ProcessGroup, ReduceOp

from dist_face.dist import comm
from dist_face.dist.topology import Topology


@dataclass(frozen=True)
class ParallelContext:
    """Where this rank runs and the groups it talks over.

    Attributes:
        topology: this rank's position in the job.
        device: the device this rank trains on.
        data_group: data-parallel group (None = the default group).
        class_group: class-sharding group (None = the default group).
        control_group: group serving CPU tensors, for host-side flags (None = the default
            group, when it serves CPU tensors or when there is no process group).
    """

    topology: Topology
    device: torch.device
    data_group: ProcessGroup | None = None
    class_group: ProcessGroup | None = None
    control_group: ProcessGroup | None = None

    @classmethod
    def from_default_group(cls, topology: Topology, device: torch.device) -> ParallelContext:
        """The context over whatever default group exists (collective when one must be built).

        Every rank must call it at the same point: under NCCL it creates the gloo control
        group.
        """
        return cls(topology, device, None, None, comm.control_group(None))

    def all_ranks_ok(self, ok: bool) -> bool:
        """True when ``ok`` holds on every rank (a MIN over the control group; host values)."""
        return bool(self.min_over_ranks(int(ok)))

    def min_over_ranks(self, value: int) -> int:
        """The least of every rank's ``value`` (over the control group; host values)."""
        flag = torch.tensor(value, dtype=torch.int64)  # CPU: the control group serves it
        comm.all_reduce(flag, ReduceOp.MIN, self.control_group)
        return int(flag)

    def barrier(self) -> None:
        """Wait for every rank, over the control group (no device work involved)."""
        comm.barrier(self.control_group)
