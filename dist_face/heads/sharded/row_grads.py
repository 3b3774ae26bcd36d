"""The row gradients a head's backward hands over, held until the step decides.

A sharded head never updates its centers itself: its backward computes each block's gradient
of the kept rows (``[R, D]`` and, for the softmax margin, ``[R]`` for the class bias) and puts
it here. The step then checks these gradients with every other one (inf/NaN, the fp16 loss
scale divided out) in its one skip decision, and the head's
:class:`~dist_face.heads.sharded.row_optim.RowSparseOptimizer` applies them, or drops them when the
step is skipped. No ``[C_local, D]`` gradient exists: the sink holds the kept rows' only.

Memory: the held gradients are ``4·D`` bytes per kept class (plus ``4`` for a class bias)
until the update, so ``r · 4·C_local·D`` bytes at sample rate ``r``. A step already known to
be skipped before the head's backward (a label the loader refused, seen on the host) holds
nothing: :meth:`RowGradSink.refuse`.
"""

from __future__ import annotations

import torch

RowIndex = slice | torch.Tensor
"""Which rows of a ``[C_local, ...]`` tensor: a contiguous ``slice`` or sorted int64 ids."""


class RowGradSink:
    """Blocks of row gradients of one step, in the order the head's backward produced them.

    Attributes:
        blocks: ``[(rows, [grad per row parameter or None])]``; the gradients are float32
            tensors the sink owns (the head hands over fresh tensors), scaled by the loss
            scale until the step divides it out.
    """

    def __init__(self) -> None:
        self.blocks: list[tuple[RowIndex, list[torch.Tensor | None]]] = []
        self._finite: torch.Tensor | None = None  # 0-dim bool: every block's loss was finite
        self._refused = False

    def put(self, rows: RowIndex, grads: list[torch.Tensor | None], finite: torch.Tensor) -> None:
        """Take one block's row gradients (the head's backward; ownership passes here).

        Args:
            rows: the block's rows (a slice, or sorted unique int64 ids).
            grads: per row parameter, ``[R, ...]`` float32 gradients, or None.
            finite: 0-dim device bool; False when the head's loss or its incoming gradient
                was inf/NaN: the step is then skipped.
        """
        self._finite = finite if self._finite is None else self._finite & finite
        if not self._refused:
            self.blocks.append((rows, grads))

    def refuse(self) -> None:
        """This step is skipped whatever comes: hold no gradient until :meth:`clear`."""
        self._refused = True
        self.blocks.clear()

    def tensors(self) -> list[torch.Tensor]:
        """Every held gradient, for the step's unscale and inf/NaN check."""
        return [g for _, grads in self.blocks for g in grads if g is not None]

    def finite(self) -> torch.Tensor | None:
        """0-dim device bool: every block's loss was finite (None: no block this step)."""
        return self._finite

    def nonfinite(self) -> torch.Tensor | None:
        """0-dim device bool: some block's loss was inf/NaN (None: no block this step)."""
        return None if self._finite is None else ~self._finite

    def clear(self) -> None:
        """Drop everything (after the update, or a skipped step)."""
        self.blocks.clear()
        self._finite = None
        self._refused = False
