"""The DALI backend: record shards decoded by NVIDIA DALI (nvJPEG on a GPU, libjpeg-turbo on a CPU).

One pipeline per rank and epoch: ``fn.readers.mxnet`` over every shard of the set, split into
W contiguous pieces by DALI, of which this rank reads piece ``(rank + epoch) mod W`` (the
GLOBAL rank: sharding by local rank would make every node read the same data). Shards are
globally shuffled when packed, and the reader shuffles within a window of
``initial_fill`` records with a seed derived from (seed, epoch, rank), so the order is a pure
function of those. Images are decoded with ``device="mixed"`` on CUDA (the CPU decoder
otherwise), mirrored with probability 0.5 and normalised to [-1, 1] in HWC, delivered as
``[B, 3, H, W]`` views in the channels-last memory layout (the torch backend's layout, and the
one the backbone runs in on CUDA). Labels come from the record headers on the CPU: they are
checked there (:mod:`dist_face.data.loading.labels`) and delivered on the host, in pinned memory on
CUDA, as the torch backend delivers them (the head samples from them; a device copy is then
non-blocking).

DALI reads one index file per reader, so the shards' indexes are combined into one whose
offsets run over the concatenated ``.rec`` files; it is written once to a cache directory,
never into the dataset.

Semantics compared with the torch backend:
* equal batches: DALI's pieces differ by up to one record, so every rank yields
  ``floor(floor(N / W) / B)`` full batches per epoch;
* resume: the reader cannot seek, so ``epoch(e, offset)`` reads and discards the first
  ``offset // B`` batches of the epoch (exact, at the cost of decoding them);
* corrupt records: the DALI decoder cannot skip one; an undecodable record stops the run with
  DALI's error. Run ``tools/verify.py`` on a new shard set before training with DALI.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from dist_face.config.base import ConfigError
from dist_face.data.format.shards import ShardSet
from dist_face.data.loading.backend import BACKENDS
from dist_face.data.loading.labels import screen_labels
from dist_face.dist import Topology

if TYPE_CHECKING:
    from dist_face.config.schema import DataConfig
    from dist_face.data.loading.loader import DataSource

logger = logging.getLogger(__name__)


def dali_available() -> bool:
    """True when ``nvidia.dali`` imports."""
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def dali_batches_per_epoch(num_samples: int, world_size: int, batch_size: int) -> int:
    """Full batches every rank yields per epoch: DALI's smallest piece, ``⌊N/W⌋``, over B."""
    return (num_samples // world_size) // batch_size


def combined_index(shards: ShardSet, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """One ``.idx`` for all shards, offsets shifted by the sizes of the earlier ``.rec`` files.

    Built from the manifest (already checked against ``meta.json`` by :meth:`ShardSet.open`),
    so DALI yields the records in manifest order: key ``i`` is global record ``i``. The file is
    keyed by a hash of the shard set's summary (every shard's size and checksum), the ``.rec``
    files' sizes and mtimes and its path, and written atomically, so concurrent ranks can
    share it.

    Args:
        shards: The shard set.
        cache_dir: Where to write; default ``<tempdir>/dist_face_dali`` (never the dataset,
            which may be read-only).

    Returns:
        Path of the combined index (one line per record: key, a tab, byte offset).

    Raises:
        ValueError: A shard's records are not in file order in the manifest (DALI derives
            each record's size from the next offset), naming the manifest, shard and row.
    """
    # meta.json's content and every .rec's size and mtime: a shard set or a scanned .rec
    # (which has no meta.json) replaced in place gets a new index
    stamp = [shards.meta.to_json(), os.path.abspath(shards.root)]
    for s in range(shards.num_shards):
        st = os.stat(shards.rec_path(s))
        stamp.append(f"{shards.rec_path(s)}:{st.st_size}:{st.st_mtime_ns}")
    digest = hashlib.sha256("\n".join(stamp).encode()).hexdigest()[:16]
    folder = Path(cache_dir or Path(tempfile.gettempdir()) / "dist_face_dali")
    path = folder / f"{digest}.idx"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    parts, base = [], 0
    for s in range(shards.num_shards):
        rows = np.flatnonzero(shards.shard_ids == s)
        offsets = shards.offsets[rows]
        size = os.path.getsize(shards.rec_path(s))
        bad = np.flatnonzero((np.diff(offsets) <= 0) | (offsets[1:] >= size))
        if bad.size or (offsets.size and offsets[0] < 0):
            row = int(rows[bad[0] + 1]) if bad.size else int(rows[0])
            raise ValueError(
                f"{Path(shards.root) / 'manifest.parquet'}: row {row} (shard {s}, key "
                f"{shards.keys[row]}, offset {shards.offsets[row]}) is out of file order or "
                f"beyond {shards.rec_path(s)} ({size} bytes); DALI needs ascending offsets"
            )
        parts.append(offsets + base)
        base += size
    offsets = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    text = "".join(f"{n}\t{off}\n" for n, off in enumerate(offsets.tolist()))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def dali_epoch(
    shards: ShardSet,
    topology: Topology,
    device: torch.device,
    *,
    batch_size: int,
    epoch: int,
    offset: int,
    seed: int,
    hflip: bool,
    threads: int,
    prefetch: int,
    augment: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0),
    image_size: int = 112,
    num_classes: int | None = None,
    on_refused: Callable[[str], None] | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's ``(images [B,3,H,W] float, labels [B] int64)`` of one epoch.

    Images are channels-last on ``device``; labels on the host (pinned when it is CUDA).
    With ``num_classes``, a header label outside ``[0, C)`` is delivered as
    :data:`~dist_face.data.loading.labels.REFUSED_LABEL` and ``on_refused`` receives the one-line
    description of the first one of each batch.
    """
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

    world, n = topology.world_size, len(shards)
    batches = dali_batches_per_epoch(n, world, batch_size)
    recs = [shards.rec_path(s) for s in range(shards.num_shards)]
    index = str(combined_index(shards))
    cuda = device.type == "cuda"
    where = (
        f"a record header of {shards.root} (data.backend=dali, rank {topology.rank}, epoch {epoch}"
    )
    verify = f"dist-face-verify {shards.root} names the record"

    @pipeline_def(enable_conditionals=True)
    def pipeline():  # DALI graph definition
        jpegs, labels = fn.readers.mxnet(
            path=recs,
            index_path=[index],
            shard_id=(topology.rank + epoch) % world,
            num_shards=world,
            random_shuffle=True,
            initial_fill=min(32768, max(n // world, 1)),
            pad_last_batch=False,
            name="reader",
        )
        images = fn.decoders.image(jpegs, device="mixed" if cuda else "cpu", output_type=types.RGB)
        images = _augment(images, augment, image_size, fn, types)
        mirror = fn.random.coin_flip(probability=0.5) if hflip else 0
        images = fn.crop_mirror_normalize(
            images,
            dtype=types.FLOAT,
            output_layout="HWC",  # [B, 3, H, W] channels-last after a permute, no copy
            mean=[127.5] * 3,
            std=[127.5] * 3,
            mirror=mirror,
        )
        return images, labels

    pipe = pipeline(
        batch_size=batch_size,
        num_threads=max(threads, 1),
        device_id=device.index if cuda else None,
        prefetch_queue_depth=prefetch,
        seed=_seed(seed, epoch, topology.rank),
    )
    pipe.build()
    it = DALIGenericIterator(
        [pipe],
        ["images", "labels"],
        reader_name="reader",
        last_batch_policy=LastBatchPolicy.DROP,
        auto_reset=False,
    )
    skip = offset // batch_size
    for b, out in enumerate(it):
        if b >= batches:
            break
        if b < skip:
            continue
        images, labels = out[0]["images"], out[0]["labels"].view(-1).long()  # labels: CPU
        if num_classes is not None:
            refused = screen_labels(labels, num_classes, f"{where}, batch {b}); {verify}")
            if refused is not None and on_refused is not None:
                on_refused(refused)
        if cuda:  # pinned: a device copy of them does not block the host
            labels = labels.pin_memory()
        yield images.permute(0, 3, 1, 2).to(device, non_blocking=True), labels


def _seed(seed: int, epoch: int, rank: int) -> int:
    digest = hashlib.sha256(f"{seed}:{epoch}:{rank}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def _augment(images, probabilities, size, fn, types):
    """arcface_torch's augmentations as DALI conditionals (CPU predicates, data on any device).

    The Python ``if p > 0`` is decided when the graph is built; the inner ``if`` on a coin flip
    becomes a per-sample DALI conditional (the pipeline enables conditionals).
    """
    down, blur, hsv, gray = probabilities
    if down > 0:
        if fn.random.coin_flip(probability=down, dtype=types.BOOL):
            side = fn.random.uniform(range=(56.0, 90.0))
            small = fn.resize(images, resize_x=side, resize_y=side)
            images = fn.resize(small, resize_x=float(size), resize_y=float(size))
    if blur > 0:
        if fn.random.coin_flip(probability=blur, dtype=types.BOOL):
            images = fn.gaussian_blur(images, sigma=fn.random.uniform(values=[0.5, 1.0]))
    if hsv > 0:
        if fn.random.coin_flip(probability=hsv, dtype=types.BOOL):
            images = fn.hsv(
                images,
                hue=fn.random.uniform(range=(0.0, 20.0)),
                saturation=fn.random.uniform(range=(1.0, 1.2)),
            )
    if gray > 0:
        if fn.random.coin_flip(probability=gray, dtype=types.BOOL):
            images = fn.hsv(images, saturation=0.0)
    return images


@BACKENDS.register("dali")
class DaliBackend:
    """NVIDIA DALI: GPU decoding from per-rank readers of the combined shard files."""

    auto_rank = 0

    @classmethod
    def unsuited(
        cls, cfg: DataConfig, device: torch.device, dataset: ShardSet | None
    ) -> str | None:
        """No CUDA, no DALI, or records DALI would read wrongly or badly."""
        if device.type != "cuda":
            return "no CUDA device"
        if not dali_available():
            return "nvidia-dali is not installed"
        assert dataset is not None
        if not dataset.meta.labels_in_records:
            return "labels are not in the record headers"
        if not dataset.meta.shuffled:  # an InsightFace .rec: sorted by identity
            return "records are not globally shuffled, and DALI shuffles within a window only"
        return None

    @classmethod
    def check(cls, cfg: DataConfig, device: torch.device, dataset: ShardSet | None) -> None:
        """DALI installed and labels in the record headers; warn about what it does badly."""
        if not dali_available():
            raise ConfigError("data.backend: dali needs nvidia-dali (pip install dist_face[dali])")
        assert dataset is not None
        if not dataset.meta.labels_in_records:
            raise ConfigError(
                f"data.backend: dali reads labels from the record headers, but "
                f"{cfg.root} was relabelled in its manifest only or stores label arrays; "
                "rewrite it with tools/reshard.py (tools/pack.py for a .rec) or use "
                "data.backend=torch"
            )
        if not dataset.meta.shuffled:
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

    def __init__(self, source: DataSource) -> None:
        self.source = source

    def batches_per_epoch(self) -> int:
        """Per-rank readers: every rank reads ``ceil(N / W)`` samples."""
        s = self.source
        return dali_batches_per_epoch(s.num_samples, s.topology.world_size, s.cfg.batch_size)

    def batches_left(self, consumed: int) -> int:
        """Per-rank readers: only positions of the same world size exist."""
        s = self.source
        done = consumed // s.topology.world_size // s.cfg.batch_size
        return max(self.batches_per_epoch() - done, 0)

    def epoch(self, epoch: int, consumed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The DALI pipeline's batches of ``epoch`` from position ``consumed``."""
        s, cfg = self.source, self.source.cfg
        assert s.dataset is not None
        return dali_epoch(
            s.dataset,
            s.topology,
            s.device,
            batch_size=cfg.batch_size,
            epoch=epoch,
            offset=consumed // s.topology.world_size,
            seed=s.seed,
            hflip=cfg.hflip,
            threads=cfg.num_workers,
            prefetch=cfg.prefetch,
            augment=(cfg.aug_downscale_p, cfg.aug_blur_p, cfg.aug_hsv_p, cfg.aug_gray_p),
            image_size=cfg.image_size,
            num_classes=s.num_classes,
            on_refused=s.refuse,
        )
