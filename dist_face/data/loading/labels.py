"""Labels are checked on the host, before they reach the device.

A label outside ``[0, num_classes)`` must not reach the head: on CUDA an indexing kernel would
stop with a device-side assert whose message is lost, and the other ranks would wait in their
next collective until the process group's timeout. The loaders therefore check each batch's
labels on the host (a few hundred integers), replace a bad one by :data:`REFUSED_LABEL` and
keep a one-line description of the first one. The loaders deliver the labels on the host
(pinned for CUDA); the step reads the negative label there, skips the step on every rank (its
skip decision, :mod:`dist_face.train.step`) and feeds the head a valid label instead;
:class:`~dist_face.train.hooks.RefusedLabelHook` then stops every rank with that description
at the next log step.
"""

from __future__ import annotations

import torch

REFUSED_LABEL = -1
"""The label a loader delivers in place of one outside ``[0, num_classes)``."""


class LabelError(ValueError):
    """A label outside the class range reached the training data: value, range and where."""


def screen_labels(labels: torch.Tensor, num_classes: int, where: str) -> str | None:
    """Replace labels outside ``[0, num_classes)`` by :data:`REFUSED_LABEL`, in place.

    Args:
        labels: ``[B]`` int64 labels on the CPU.
        num_classes: the class count ``C`` of the data.
        where: where the batch comes from (data set, loader, rank, epoch), for the message.

    Returns:
        None when every label is in range, else one line naming the first bad value, ``C``
        and ``where``.
    """
    bad = (labels < 0) | (labels >= num_classes)
    if not bool(bad.any()):  # a CPU tensor: no device involved
        return None
    first = int(labels[bad][0])
    labels[bad] = REFUSED_LABEL
    return f"label {first} is outside [0, {num_classes}) (the data's class count): {where}"


def on_device(labels: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``labels`` on ``device``: the same tensor if already there, else a non-blocking copy.

    The loaders' host labels are pinned when the device is CUDA, so the copy is queued on the
    device's stream and the host goes on (pinned memory stays alive until the copy is done).
    """
    if labels.device == device:
        return labels
    return labels.to(device, non_blocking=True)
