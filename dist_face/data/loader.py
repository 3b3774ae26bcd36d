"""Training data: the same contract for every backend.

:func:`build_loader` returns a :class:`DataSource`; ``source.epoch(epoch, offset)`` iterates
this rank's batches of one epoch from a sample offset: ``(images, labels)`` with images float
``[B, 3, H, W]`` in [-1, 1] and labels int64 ``[B]``, both on the training device.

* Every rank yields the same number of full batches per epoch (the sharded head runs
  collectives every step): the partition pads or drops to equal counts, and a trailing partial
  batch is never yielded.
* The order is a pure function of (seed, epoch); ``offset`` (samples this rank already
  consumed in the epoch) resumes with exactly the samples not yet seen.
* A record whose payload CRC-32 differs from the manifest's (torch backend, ``data.check_crc``)
  or that fails to decode is counted and replaced by another sample of the same batch, or
  raises :class:`~dist_face.data.framing.CorruptRecordError` naming shard, key and offset
  when ``data.on_corrupt=fail``. A flipped bit in a JPEG usually still decodes, to other
  pixels: only the checksum tells.

Backends: ``torch`` (DataLoader workers reading the memory-mapped shards, Pillow decoding,
flips on the CPU, a background thread moving batches to the device), ``dali`` (see
:mod:`dist_face.data.dali_loader`) and ``synthetic`` (fixed random tensors on the device, to
measure the model and the collectives without I/O).
"""

from __future__ import annotations

import io
import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from dist_face.config import ConfigError, DataConfig
from dist_face.data.augment import augment
from dist_face.data.dali_loader import dali_available, dali_batches_per_epoch, dali_epoch
from dist_face.data.framing import CorruptRecordError
from dist_face.data.partition import partition, samples_per_rank
from dist_face.data.rec_index import open_dataset
from dist_face.data.shards import ShardSet
from dist_face.dist import Topology

logger = logging.getLogger(__name__)

_JOIN_TIMEOUT_S = 30.0  # a closed epoch waits this long for the batch being decoded


@dataclass
class DataSource:
    """One rank's training data; ``epoch(e, offset)`` iterates the rest of epoch ``e``."""

    cfg: DataConfig
    topology: Topology
    device: torch.device
    seed: int
    num_samples: int
    num_classes: int
    backend: str
    corrupt_records: int = 0
    """Records of this rank skipped for a CRC-32 mismatch or a failed decode (host counter;
    the log line shows the sum over ranks)."""
    _synthetic: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)

    @property
    def samples_per_rank(self) -> int:
        """Samples each rank reads per epoch (after padding or dropping)."""
        return samples_per_rank(self.num_samples, self.topology.world_size, self.cfg.drop_last)

    @property
    def batches_per_epoch(self) -> int:
        """Full batches each rank yields per epoch."""
        if self.backend == "dali":
            return dali_batches_per_epoch(
                self.num_samples, self.topology.world_size, self.cfg.batch_size
            )
        return self.samples_per_rank // self.cfg.batch_size

    def epoch(self, epoch: int, offset: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's batches of ``epoch``, after the first ``offset`` samples."""
        remaining = (self.samples_per_rank - offset) // self.cfg.batch_size
        if self.backend == "synthetic":
            return self._synthetic_batches(remaining)
        if self.backend == "dali":
            return dali_epoch(
                open_dataset(self.cfg.root, check_labels=False),
                self.topology,
                self.device,
                batch_size=self.cfg.batch_size,
                epoch=epoch,
                offset=offset,
                seed=self.seed,
                hflip=self.cfg.hflip,
                threads=self.cfg.num_workers,
                prefetch=self.cfg.prefetch,
                augment=(
                    self.cfg.aug_downscale_p,
                    self.cfg.aug_blur_p,
                    self.cfg.aug_hsv_p,
                    self.cfg.aug_gray_p,
                ),
                image_size=self.cfg.image_size,
            )
        return _to_device(self._torch_batches(epoch, offset), self.device, self.cfg.prefetch, self)

    def _synthetic_batches(self, count: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._synthetic is None:
            gen = torch.Generator().manual_seed(self.seed + self.topology.rank)
            b, s = self.cfg.batch_size, self.cfg.image_size
            images = torch.rand(b, 3, s, s, generator=gen).mul_(2).sub_(1)
            labels = torch.randint(self.num_classes, (b,), generator=gen)
            self._synthetic = (images.to(self.device), labels.to(self.device))
        for _ in range(count):
            yield self._synthetic

    def _torch_batches(self, epoch: int, offset: int) -> DataLoader:
        dataset = ShardBatches(self.cfg, self.topology, self.seed, epoch, offset, self.num_samples)
        workers = self.cfg.num_workers
        return DataLoader(
            dataset,
            batch_size=None,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=self.cfg.prefetch if workers else None,
        )


class ShardBatches(IterableDataset):
    """Worker side of the torch backend: uint8 batches of this (rank, worker)'s samples."""

    def __init__(
        self, cfg: DataConfig, topology: Topology, seed: int, epoch: int, offset: int, n: int
    ) -> None:
        """Describe one epoch of one rank; nothing is opened until a worker iterates."""
        super().__init__()
        self.cfg, self.topology, self.seed, self.epoch, self.offset, self.n = (
            cfg,
            topology,
            seed,
            epoch,
            offset,
            n,
        )

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        """Yield ``(images uint8 [B, 3, H, W], labels int64 [B], corrupt count)``."""
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        cfg, b = self.cfg, self.cfg.batch_size
        indices = partition(
            self.n,
            world_size=self.topology.world_size,
            rank=self.topology.rank,
            num_workers=workers,
            worker_id=worker,
            batch_size=b,
            seed=self.seed,
            epoch=self.epoch,
            offset=self.offset,
            drop_last=cfg.drop_last,
        )
        shards = open_dataset(cfg.root, check_labels=False)
        rng = np.random.default_rng(
            [self.seed, self.epoch, self.topology.rank, worker, self.offset]
        )
        for start in range(0, len(indices) - b + 1, b):
            yield self._batch(shards, indices[start : start + b], rng)

    def _batch(
        self, shards: ShardSet, indices: np.ndarray, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        size = self.cfg.image_size
        images = np.empty((len(indices), size, size, 3), dtype=np.uint8)
        labels = np.empty(len(indices), dtype=np.int64)
        good: list[int] = []
        first_error: CorruptRecordError | None = None
        flips = rng.random(len(indices)) < 0.5
        for slot, i in enumerate(indices):
            try:
                data, labels[slot] = shards.read_image(int(i), self.cfg.check_crc)
                img = _decode(data, size)
                if self.cfg.augments:
                    img = augment(img, rng, self.cfg)
                images[slot] = np.asarray(img)
            except Exception as exc:  # Pillow raises OSError, SyntaxError, DecompressionBomb…
                error = _located(exc, shards, int(i))
                if self.cfg.on_corrupt == "fail":
                    raise error from None
                logger.warning("skipping record %d: %s", int(i), error)
                first_error = first_error or error
                continue
            if self.cfg.hflip and flips[slot]:
                images[slot] = images[slot, :, ::-1]
            good.append(slot)
        kept = set(good)
        bad = [s for s in range(len(indices)) if s not in kept]
        if first_error is not None and not good:
            raise CorruptRecordError(
                f"every record of a batch is corrupt (records {indices.tolist()}); the first: "
                f"{first_error.reason}",
                first_error.path,
                first_error.key,
                first_error.offset,
            )
        for k, slot in enumerate(bad):  # keep the batch full: reuse good samples of this batch
            images[slot], labels[slot] = images[good[k % len(good)]], labels[good[k % len(good)]]
        return torch.from_numpy(images).permute(0, 3, 1, 2), torch.from_numpy(labels), len(bad)


def _decode(data: bytes, size: int) -> Image.Image:
    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("RGB")
        if img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BILINEAR)
        return img


def _located(exc: Exception, shards: ShardSet, i: int) -> CorruptRecordError:
    if isinstance(exc, CorruptRecordError) and exc.path is not None:
        return exc
    shard = int(shards.shard_ids[i])
    return CorruptRecordError(
        f"image does not decode: {exc}",
        path=shards.rec_path(shard),
        key=int(shards.keys[i]),
        offset=int(shards.offsets[i]),
    )


def _to_device(
    batches: DataLoader, device: torch.device, depth: int, source: DataSource
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Move batches to ``device`` and normalise them in a background thread, ``depth`` ahead.

    Closing the returned generator (or dropping it) stops and joins the thread. A prefetch
    thread still inside a torch op when the interpreter exits is killed by CPython's daemon
    thread shutdown, which aborts the process ("terminate called without an active exception")
    after training has finished.
    """
    out: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item: object) -> bool:
        """Queue ``item`` unless asked to stop first; True when queued."""
        while not stop.is_set():
            try:
                out.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for images, labels, bad in batches:
                if stop.is_set():
                    return
                source.corrupt_records += bad
                x = images.to(device, non_blocking=True).float().sub_(127.5).div_(127.5)
                if not put((x, labels.to(device, non_blocking=True))):
                    return
        except BaseException as exc:  # re-raised in the consumer
            put(exc)
            return
        put(done)

    thread = threading.Thread(target=produce, name="dist_face-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = out.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=_JOIN_TIMEOUT_S)
        if thread.is_alive():
            logger.warning(
                "prefetch thread still busy %.0f s after the epoch was closed", _JOIN_TIMEOUT_S
            )


def dataset_size(cfg: DataConfig) -> tuple[int, int]:
    """``(num_samples, num_classes)`` of the configured data.

    Raises:
        ConfigError: the shard set is missing or disagrees with ``data.num_classes``.
    """
    if cfg.backend == "synthetic" or cfg.root == "synthetic":
        if cfg.num_classes <= 0:
            raise ConfigError("data.num_classes: the synthetic backend needs a class count > 0")
        return cfg.synthetic_samples, cfg.num_classes
    try:
        shards = open_dataset(cfg.root)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"data.root: cannot open dataset {cfg.root!r}: {exc}") from None
    if cfg.num_classes and cfg.num_classes != shards.num_classes:
        raise ConfigError(
            f"data.num_classes: {cfg.num_classes}, but the shard set {cfg.root} "
            f"has {shards.num_classes} classes"
        )
    return len(shards), shards.num_classes


def build_loader(
    cfg: DataConfig, topology: Topology, device: torch.device, *, seed: int
) -> DataSource:
    """The training data of this rank; ``auto`` is DALI with CUDA and DALI, else torch."""
    num_samples, num_classes = dataset_size(cfg)
    backend = _resolve_backend(cfg, device)
    source = DataSource(cfg, topology, device, seed, num_samples, num_classes, backend)
    if source.batches_per_epoch == 0:
        raise ConfigError(
            f"data.batch_size: {cfg.batch_size} is larger than the "
            f"{source.samples_per_rank} samples each rank reads per epoch"
        )
    return source


def _resolve_backend(cfg: DataConfig, device: torch.device) -> str:
    """The backend to run: ``auto`` is DALI with CUDA and DALI installed, else torch."""
    if cfg.root == "synthetic":
        return "synthetic"
    if cfg.backend == "auto":
        if device.type == "cuda" and dali_available():
            why = _unsuited_to_dali(open_dataset(cfg.root, check_labels=False))
            if why is None:
                return "dali"
        else:
            why = "no CUDA device" if device.type != "cuda" else "nvidia-dali is not installed"
        logger.info("data.backend=auto: torch loader (%s for DALI GPU decoding)", why)
        return "torch"
    if cfg.backend == "dali":
        if not dali_available():
            raise ConfigError("data.backend: dali needs nvidia-dali (pip install dist_face[dali])")
        shards = open_dataset(cfg.root, check_labels=False)
        if not shards.meta.labels_in_records:
            raise ConfigError(
                f"data.backend: dali reads labels from the record headers, but "
                f"{cfg.root} was relabelled in its manifest only or stores label arrays; "
                "rewrite it with tools/reshard.py (tools/pack.py for a .rec) or use "
                "data.backend=torch"
            )
        if not shards.meta.shuffled:
            logger.warning(
                "data.backend=dali: %s are not globally shuffled and DALI shuffles within "
                "32768 records only, so batches hold few identities; pack them with "
                "tools/pack.py (global shuffle) or use data.backend=torch",
                cfg.root,
            )
        if cfg.on_corrupt == "skip":
            logger.warning(
                "data.backend=dali cannot skip undecodable records; check new shard "
                "sets with tools/verify.py"
            )
    return cfg.backend


def _unsuited_to_dali(shards: ShardSet) -> str | None:
    """Why DALI would read ``shards`` wrongly or badly (None when it suits them)."""
    if not shards.meta.labels_in_records:
        return "labels are not in the record headers"
    if not shards.meta.shuffled:  # an InsightFace .rec: sorted by identity
        return "records are not globally shuffled, and DALI shuffles within a window only"
    return None
