"""Data backends: how one rank's batches are made, registered by name (``data.backend``).

A backend is a class registered in :data:`BACKENDS`;
:class:`~dist_face.data.loading.loader.DataSource` builds one and delegates to it. Every backend
delivers the same contract (see :mod:`dist_face.data.loading.loader`): ``[B, 3, H, W]`` float
images in [-1, 1] on the training device and ``[B]`` int64 host labels, the sample partition of
:mod:`dist_face.data.loading.partition`.

``data.backend=auto`` tries the backends with an ``auto_rank``, lowest first, and takes the
first whose :meth:`Backend.unsuited` has no objection. ``data.root=synthetic`` always selects
the ``synthetic`` backend. The implementations register themselves in their own modules,
which :mod:`dist_face.data.loading.loader` imports (that import is the registration).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, ClassVar, Protocol

from dist_face.registry import Registry

if TYPE_CHECKING:
    import torch

    from dist_face.config.schema import DataConfig
    from dist_face.data.format.shards import ShardSet
    from dist_face.data.loading.loader import DataSource


class Backend(Protocol):
    """The contract of a data backend (one instance per rank and run)."""

    auto_rank: ClassVar[int | None]
    """Order in which ``data.backend=auto`` tries it (lowest first); None: never chosen by auto."""

    @classmethod
    def unsuited(
        cls, cfg: DataConfig, device: torch.device, dataset: ShardSet | None
    ) -> str | None:
        """Why ``auto`` should not pick this backend here (None: it may).

        Args:
            cfg: the ``data`` section.
            device: the rank's training device.
            dataset: the opened dataset (None for synthetic data).
        """

    @classmethod
    def check(cls, cfg: DataConfig, device: torch.device, dataset: ShardSet | None) -> None:
        """Refuse to run when chosen by name and unable to (warn about what it does badly).

        Raises:
            ConfigError: naming ``data.backend`` and what to do instead.
        """

    def __init__(self, source: DataSource) -> None:
        """Bind to one rank's source (config, topology, device, seed, sizes, dataset)."""

    def batches_per_epoch(self) -> int:
        """Full batches this rank yields per epoch."""

    def batches_left(self, consumed: int) -> int:
        """Full batches this rank yields in an epoch whose first ``consumed`` samples are used."""

    def epoch(self, epoch: int, consumed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's batches of ``epoch`` after the first ``consumed`` samples of all ranks."""


BACKENDS: Registry[type[Backend]] = Registry("data backend")
"""Every data backend by name; filled by the modules :mod:`dist_face.data.loading.loader`
imports."""
