"""Training data: the same contract for every backend.

:func:`build_loader` returns a :class:`DataSource`; ``source.epoch(epoch, consumed)`` iterates
this rank's batches of the rest of one epoch: ``(images, labels)`` with images float
``[B, 3, H, W]`` in [-1, 1], channels-last in memory (every backend alike), on the training
device, and labels int64 ``[B]`` on the HOST, in pinned memory when the device is CUDA: the
sharded head reads them there (Partial FC's exact sample size without asking the device), and
whoever needs them on the device copies them without blocking
(:func:`dist_face.data.loading.labels.on_device`).

* Labels are checked on the host before they reach the device: one outside
  ``[0, num_classes)`` is delivered as ``-1`` and described in :attr:`DataSource.refused`
  (:mod:`dist_face.data.loading.labels`).
* Every rank yields the same number of full batches per epoch (the sharded head runs
  collectives every step): the partition pads or drops to equal counts, and a trailing partial
  batch is never yielded.
* The order is a pure function of (seed, epoch); ``consumed`` (samples all ranks together
  consumed in the epoch, on any earlier world size) resumes with exactly the samples not yet
  seen, dealt over the ranks of the resumed job (:mod:`dist_face.data.loading.partition`).
* The random flip and augmentations of a sample are drawn from a generator seeded by
  ``(seed, epoch, position of the sample in the epoch's global order)``: the same whichever
  rank or worker reads it and wherever the run resumed.
* A record whose payload CRC-32 differs from the manifest's (torch backend, ``data.check_crc``)
  or that fails to decode is counted and replaced by another sample of the same batch, or
  raises :class:`~dist_face.data.format.framing.CorruptRecordError` naming shard, key and offset
  when ``data.on_corrupt=fail``. A flipped bit in a JPEG usually still decodes, to other
  pixels: only the checksum tells.

Backends: ``torch`` (DataLoader workers reading the memory-mapped shards, Pillow decoding,
flips on the CPU, a background thread moving batches to the device), ``dali`` (see
:mod:`dist_face.data.loading.dali_loader`) and ``synthetic`` (fixed random tensors on the device, to
measure the model and the collectives without I/O).

The torch backend's worker processes are forked by the thread that opens the epoch (the
training loop's main thread), never by the prefetch thread: forking from a background thread
while the main thread holds an interpreter lock can leave the child stopped for ever. A batch
that does not arrive within ``data.timeout_s`` raises :class:`DataTimeoutError` naming the
rank, the epoch and the worker that owes it, instead of waiting until a collective times out.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from dist_face.config.base import ConfigError
from dist_face.data.format.framing import CorruptRecordError
from dist_face.data.format.rec_index import open_dataset
from dist_face.data.format.shards import ShardSet
from dist_face.data.loading.augment import augment
from dist_face.data.loading.backend import BACKENDS, Backend
from dist_face.data.loading.dali_loader import DaliBackend  # noqa: F401  (registration)
from dist_face.data.loading.image_fit import decode_fit
from dist_face.data.loading.labels import screen_labels
from dist_face.data.loading.partition import partition, samples_left, samples_per_rank
from dist_face.dist import Topology

if TYPE_CHECKING:
    from dist_face.config.schema import DataConfig

logger = logging.getLogger(__name__)

_JOIN_TIMEOUT_S = 30.0  # a closed epoch waits this long for the batch being decoded


class DataTimeoutError(RuntimeError):
    """A batch did not arrive within ``data.timeout_s``: a stuck or dead loader worker."""


@dataclass
class DataSource:
    """One rank's training data; ``epoch(e, consumed)`` iterates the rest of epoch ``e``."""

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
    refused: str | None = None
    """One line describing the first label of this rank outside ``[0, num_classes)`` (the
    loader delivered it as ``-1``); None while every label was in range."""
    dataset: ShardSet | None = field(default=None, repr=False)
    """The dataset, opened once at start-up (None for synthetic data)."""
    _impl: Backend = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._impl = BACKENDS.get(self.backend)(self)

    @property
    def samples_per_rank(self) -> int:
        """Samples each rank reads per epoch (after padding or dropping)."""
        return samples_per_rank(self.num_samples, self.topology.world_size, self.cfg.drop_last)

    @property
    def batches_per_epoch(self) -> int:
        """Full batches each rank yields per epoch."""
        return self._impl.batches_per_epoch()

    def batches_left(self, consumed: int) -> int:
        """Full batches this rank yields in an epoch whose first ``consumed`` samples are used."""
        return self._impl.batches_left(consumed)

    def epoch(self, epoch: int, consumed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's batches of ``epoch`` after the first ``consumed`` samples of all ranks."""
        return self._impl.epoch(epoch, consumed)

    def refuse(self, description: str) -> None:
        """Remember the first refused label's description (the loaders call this)."""
        if self.refused is None:  # reported by the trainer on every rank, once
            self.refused = description


class _Partitioned:
    """Backends that read the sample partition of :mod:`dist_face.data.loading.partition`."""

    auto_rank: int | None = None

    def __init__(self, source: DataSource) -> None:
        self.source = source

    @classmethod
    def unsuited(
        cls, cfg: DataConfig, device: torch.device, dataset: ShardSet | None
    ) -> str | None:
        """Runs anywhere."""
        return None

    @classmethod
    def check(cls, cfg: DataConfig, device: torch.device, dataset: ShardSet | None) -> None:
        """Nothing to refuse."""

    def batches_per_epoch(self) -> int:
        """``samples_per_rank // batch_size``."""
        return self.source.samples_per_rank // self.source.cfg.batch_size

    def batches_left(self, consumed: int) -> int:
        """What the partition leaves this rank after ``consumed`` samples, in full batches."""
        s = self.source
        left = samples_left(s.num_samples, s.topology.world_size, consumed, s.cfg.drop_last)
        return left // s.cfg.batch_size


@BACKENDS.register("torch")
class TorchBackend(_Partitioned):
    """torch ``DataLoader`` worker processes decoding on the CPU (:class:`ShardBatches`)."""

    auto_rank = 1

    def epoch(self, epoch: int, consumed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Start this epoch's workers and deliver their batches on the device."""
        # iter() starts the worker processes: here, in the caller's thread, not in the
        # prefetch thread (see the module docstring)
        batches = iter(self._batches(epoch, consumed))
        return _to_device(batches, self.source, epoch)

    def _batches(self, epoch: int, consumed: int) -> DataLoader:
        s = self.source
        dataset = ShardBatches(s.cfg, s.topology, s.seed, epoch, consumed, s.num_samples)
        workers = s.cfg.num_workers
        return DataLoader(
            dataset,
            batch_size=None,
            num_workers=workers,
            pin_memory=s.device.type == "cuda",
            prefetch_factor=s.cfg.prefetch if workers else None,
        )


@BACKENDS.register("synthetic")
class SyntheticBackend(_Partitioned):
    """One fixed random batch per rank, repeated (``data.root=synthetic``): no I/O at all."""

    def __init__(self, source: DataSource) -> None:
        super().__init__(source)
        self._batch: tuple[torch.Tensor, torch.Tensor] | None = None

    def epoch(self, epoch: int, consumed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The fixed batch, as many times as this rank has batches left."""
        return self._repeat(self.batches_left(consumed))

    def _repeat(self, count: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        s = self.source
        if self._batch is None:
            gen = torch.Generator().manual_seed(s.seed + s.topology.rank)
            b, size = s.cfg.batch_size, s.cfg.image_size
            images = torch.rand(b, size, size, 3, generator=gen).mul_(2).sub_(1)
            images = images.permute(0, 3, 1, 2)
            labels = torch.randint(s.num_classes, (b,), generator=gen)
            if s.device.type == "cuda":  # host labels, as the other backends deliver them
                labels = labels.pin_memory()
            self._batch = (images.to(s.device), labels)
        for _ in range(count):
            yield self._batch


def sample_rng(seed: int, epoch: int, position: int) -> np.random.Generator:
    """The generator of one sample's flip and augmentations.

    Args:
        seed: the run's seed.
        epoch: the epoch.
        position: the sample's position in the epoch's global order (see
            :func:`dist_face.data.loading.partition.rank_positions`), the same on any world size.
    """
    return np.random.default_rng([int(seed), int(epoch), int(position)])


class ShardBatches(IterableDataset):
    """Worker side of the torch backend: uint8 batches of this (rank, worker)'s samples."""

    def __init__(
        self, cfg: DataConfig, topology: Topology, seed: int, epoch: int, consumed: int, n: int
    ) -> None:
        """Describe the rest of one epoch of one rank; nothing is opened until iterated."""
        super().__init__()
        self.cfg, self.topology, self.seed, self.epoch = cfg, topology, seed, epoch
        self.consumed, self.n = consumed, n

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        """Yield ``(images uint8 [B, 3, H, W], labels int64 [B], corrupt count)``."""
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        cfg, b = self.cfg, self.cfg.batch_size
        indices, positions = partition(
            self.n,
            world_size=self.topology.world_size,
            rank=self.topology.rank,
            num_workers=workers,
            worker_id=worker,
            batch_size=b,
            seed=self.seed,
            epoch=self.epoch,
            start=self.consumed,
            drop_last=cfg.drop_last,
        )
        shards = open_dataset(cfg.root, check_labels=False)
        for start in range(0, len(indices) - b + 1, b):
            yield self._batch(shards, indices[start : start + b], positions[start : start + b])

    def _batch(
        self, shards: ShardSet, indices: np.ndarray, positions: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        size = self.cfg.image_size
        images = np.empty((len(indices), size, size, 3), dtype=np.uint8)
        labels = np.empty(len(indices), dtype=np.int64)
        good: list[int] = []
        first_error: CorruptRecordError | None = None
        for slot, (i, position) in enumerate(zip(indices, positions)):
            rng = sample_rng(self.seed, self.epoch, position)
            flip = rng.random() < 0.5
            try:
                data, labels[slot] = shards.read_image(int(i), self.cfg.check_crc)
                img = _decode(data, size, self.cfg.resize_mode)
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
            if self.cfg.hflip and flip:
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


def _decode(data: bytes, size: int, mode: str) -> Image.Image:
    return decode_fit(data, size, mode)  # dist_face.data.loading.image_fit: one policy everywhere


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
    batches: Iterator[tuple[torch.Tensor, torch.Tensor, int]], source: DataSource, epoch: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Move images to the device and normalise them in a background thread, a few ahead.

    Labels stay on the host (pinned by the DataLoader when the device is CUDA).

    ``batches`` is an iterator whose workers already run (started by the caller's thread).
    The consumer waits at most ``data.timeout_s`` for each batch, then raises
    :class:`DataTimeoutError` naming the worker that owes it.

    Closing the returned generator (or dropping it) stops and joins the thread. A prefetch
    thread still inside a torch op when the interpreter exits is killed by CPython's daemon
    thread shutdown, which aborts the process ("terminate called without an active exception")
    after training has finished.
    """
    device, cfg = source.device, source.cfg
    out: queue.Queue = queue.Queue(maxsize=cfg.prefetch)
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
                where = (
                    f"{source.cfg.root} (data.backend=torch, rank {source.topology.rank}, "
                    f"epoch {epoch})"
                )
                refused = screen_labels(labels, source.num_classes, where)
                if refused is not None:
                    source.refuse(refused)
                x = images.to(device, non_blocking=True).float().sub_(127.5).div_(127.5)
                if not put((x, labels)):
                    return
        except BaseException as exc:  # re-raised in the consumer
            put(exc)
            return
        put(done)

    thread = threading.Thread(target=produce, name="dist_face-prefetch", daemon=True)
    thread.start()
    join_s = _JOIN_TIMEOUT_S
    try:
        for count in itertools.count():
            try:
                item = out.get(timeout=cfg.timeout_s)
            except queue.Empty:
                join_s = 1.0  # the thread is stuck with the worker: do not wait for it
                raise _timed_out(source, epoch, count, batches) from None
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=join_s)
        if thread.is_alive():
            logger.warning("prefetch thread still busy %.0f s after the epoch was closed", join_s)


def _timed_out(source: DataSource, epoch: int, batch: int, batches: object) -> DataTimeoutError:
    """The error for batch ``batch`` of this epoch not arriving: which worker owes it."""
    workers = source.cfg.num_workers
    if workers:  # batch b of an epoch comes from worker b mod K (see partition.py)
        worker = batch % workers
        procs = getattr(batches, "_workers", None)  # DataLoader's worker processes
        pid = f" (pid {procs[worker].pid})" if procs and worker < len(procs) else ""
        who = f"loader worker {worker} of {workers}{pid}"
    else:
        who = "the in-process loader (data.num_workers=0)"
    return DataTimeoutError(
        f"data: rank {source.topology.rank}, epoch {epoch}: batch {batch} since the epoch was "
        f"opened did not arrive within data.timeout_s={source.cfg.timeout_s:g} s from {who}"
    )


def dataset_size(cfg: DataConfig) -> tuple[int, int]:
    """``(num_samples, num_classes)`` of the configured data.

    Raises:
        ConfigError: the shard set is missing or disagrees with ``data.num_classes``.
    """
    _, num_samples, num_classes = open_data(cfg)
    return num_samples, num_classes


def open_data(cfg: DataConfig) -> tuple[ShardSet | None, int, int]:
    """``(dataset, num_samples, num_classes)``: the configured data, opened once.

    The dataset is None for synthetic data.

    Raises:
        ConfigError: the shard set is missing or disagrees with ``data.num_classes``.
    """
    if cfg.backend == "synthetic" or cfg.root == "synthetic":
        if cfg.num_classes <= 0:
            raise ConfigError("data.num_classes: the synthetic backend needs a class count > 0")
        return None, cfg.synthetic_samples, cfg.num_classes
    try:
        shards = open_dataset(cfg.root)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"data.root: cannot open dataset {cfg.root!r}: {exc}") from None
    if cfg.num_classes and cfg.num_classes != shards.num_classes:
        raise ConfigError(
            f"data.num_classes: {cfg.num_classes}, but the shard set {cfg.root} "
            f"has {shards.num_classes} classes"
        )
    return shards, len(shards), shards.num_classes


def build_loader(
    cfg: DataConfig, topology: Topology, device: torch.device, *, seed: int
) -> DataSource:
    """The training data of this rank; ``auto`` is DALI with CUDA and DALI, else torch.

    The dataset is opened once here and handed to the backend.
    """
    dataset, num_samples, num_classes = open_data(cfg)
    backend = _resolve_backend(cfg, device, dataset)
    source = DataSource(
        cfg, topology, device, seed, num_samples, num_classes, backend, dataset=dataset
    )
    if source.batches_per_epoch == 0:
        raise ConfigError(
            f"data.batch_size: {cfg.batch_size} is larger than the "
            f"{source.samples_per_rank} samples each rank reads per epoch"
        )
    return source


def _resolve_backend(cfg: DataConfig, device: torch.device, dataset: ShardSet | None) -> str:
    """The backend to run: ``auto`` takes the first backend by ``auto_rank`` that suits."""
    if cfg.root == "synthetic" or dataset is None:
        return "synthetic"
    if cfg.backend == "auto":
        ranked = sorted(
            (n for n in BACKENDS.registered() if BACKENDS.get(n).auto_rank is not None),
            key=lambda n: BACKENDS.get(n).auto_rank,  # type: ignore[arg-type, return-value]
        )
        passed = []
        for name in ranked:
            why = BACKENDS.get(name).unsuited(cfg, device, dataset)
            if why is None:
                if passed:
                    logger.info("data.backend=auto: %s loader (%s)", name, "; ".join(passed))
                return name
            passed.append(f"{why} for {name}")
        raise ConfigError(f"data.backend: auto found no backend for {cfg.root}: {passed}")
    BACKENDS.get(cfg.backend).check(cfg, device, dataset)
    return cfg.backend
