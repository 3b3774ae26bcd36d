"""Seeded mutations of a shard set, and the readers' outcome on each (the data fuzz).

A case copies a clean shard set, damages it with one seeded mutation (real bytes on disk) and
runs every reader over it: ``verify``, ``ShardSet.read_image``, ``RecordReader.read`` for
every key and one epoch of the torch loader. Each case gets one outcome class:

* ``no effect``: every reader returned the original data and verify found nothing (e.g. a
  flipped padding byte, a changed ``seed`` in meta.json);
* ``detected``: verify reported it, or a reader raised a located error or skipped (counted)
  the damaged records; every sample it did return was an original one;
* failures: ``silent wrong`` (the loader or ``ShardSet`` returned an image or label that is not
  the original, or ``RecordReader`` did while verify saw nothing), ``foreign exception`` (an
  exception outside the project's error types, or any exception out of verify, which must
  report instead), ``unnamed error`` (an error that does not
  name a file of the set, or a record error without key or offset), ``verify miss`` (a
  reader saw damage that verify did not report).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dist_face.config import ConfigError, DataConfig
from dist_face.data.format.framing import CorruptRecordError, DataFileError
from dist_face.data.format.recordio import RecordReader
from dist_face.data.format.shards import ShardSet
from dist_face.data.format.verify import verify_shard_set
from dist_face.data.loading.loader import build_loader
from dist_face.dist import Topology

RECORDS, CLASSES, SIZE, BATCH = 24, 4, 32, 4
FAILURES = ("silent wrong", "foreign exception", "unnamed error", "verify miss")
PROJECT_ERRORS = (CorruptRecordError, DataFileError, ConfigError, FileNotFoundError, KeyError)


def make_base(root: Path) -> Path:
    """24 noisy 32x32 JPEGs of 4 classes packed into 3 shards; returns the shard set."""
    from dist_face.cli.pack import main as pack_main

    rng = np.random.default_rng(0)
    for i in range(RECORDS):
        folder = root / "train" / f"{i % CLASSES:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:02d}.jpg", quality=90)
    out = root / "shards"
    code = pack_main([str(root / "train"), str(out), "--shards", "3", "--shuffle", "--quiet"])
    assert code == 0
    return out


@dataclasses.dataclass
class Reference:
    """What the clean set holds: decoded samples and each shard's payloads by key."""

    samples: set[tuple[str, int]]
    """(sha1 of the decoded uint8 pixels, label) of every record."""
    images: set[tuple[bytes, int]]
    """(encoded image bytes, label) of every record."""
    payloads: dict[str, dict[int, bytes]]
    """shard name -> key -> payload."""


def reference(base: Path) -> Reference:
    """Read the clean set once."""
    from dist_face.data.loading.loader import _decode

    shards = ShardSet.open(base)
    images, samples = set(), set()
    for i in range(len(shards)):
        image, label = shards.read_image(i)
        images.add((image, label))
        samples.add((_digest(np.asarray(_decode(image, SIZE, "crop"))), label))
    payloads = {}
    for s, info in enumerate(shards.meta.shards):
        reader = RecordReader(shards.rec_path(s), shards.idx_path(s))
        payloads[info.name] = {int(k): reader.read(int(k)) for k in reader.keys}
    return Reference(samples, images, payloads)


def _digest(pixels: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(pixels).tobytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Mutations: each takes (shard set directory, rng) and damages it in place; returns a label.
# ---------------------------------------------------------------------------------------------
def _files(root: Path, suffix: str) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.name.endswith(suffix))


def _any_file(root: Path, rng: np.random.Generator) -> Path:
    files = [*_files(root, ".rec"), *_files(root, ".idx"), root / "manifest.parquet"]
    files.append(root / "meta.json")
    weights = np.array([4.0 if p.suffix == ".rec" else 1.0 for p in files])
    return files[rng.choice(len(files), p=weights / weights.sum())]


def bit_flip(root: Path, rng: np.random.Generator) -> str:
    path = _any_file(root, rng)
    data = bytearray(path.read_bytes())
    at = int(rng.integers(len(data)))
    data[at] ^= 1 << int(rng.integers(8))
    path.write_bytes(bytes(data))
    return f"bit flip {path.suffix}"


def random_bytes(root: Path, rng: np.random.Generator) -> str:
    path = _any_file(root, rng)
    data = bytearray(path.read_bytes())
    n = int(rng.integers(1, 17))
    at = int(rng.integers(max(len(data) - n, 1)))
    data[at : at + n] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return f"random bytes {path.suffix}"


def truncate(root: Path, rng: np.random.Generator) -> str:
    path = _any_file(root, rng)
    data = path.read_bytes()
    path.write_bytes(data[: int(rng.integers(len(data)))])
    return f"truncate {path.suffix}"


def idx_edit(root: Path, rng: np.random.Generator) -> str:
    path = _files(root, ".idx")[int(rng.integers(3))]
    lines = path.read_text().splitlines()
    a, b = (int(x) for x in rng.choice(len(lines), 2, replace=False))
    kind = ["swap keys", "duplicate line", "delete line", "shift offset", "empty field", "junk"][
        int(rng.integers(6))
    ]
    ka, oa = lines[a].split("\t")
    kb, ob = lines[b].split("\t")
    if kind == "swap keys":
        lines[a], lines[b] = f"{kb}\t{oa}", f"{ka}\t{ob}"
    elif kind == "duplicate line":
        lines.insert(b, lines[a])
    elif kind == "delete line":
        del lines[a]
    elif kind == "shift offset":
        lines[a] = f"{ka}\t{int(oa) + int(rng.choice([-8, -4, 4, 8, 100]))}"
    elif kind == "empty field":
        lines[a] = f"{ka}\t"
    else:
        lines[a] = ["x\t0", f"{ka} {oa}", f"{ka}\t{oa}\t1", "99999999999999999999\t0"][
            int(rng.integers(4))
        ]
    path.write_text("\n".join(lines) + "\n")
    return f".idx {kind}"


def manifest_edit(root: Path, rng: np.random.Generator) -> str:
    """Rewrite the manifest with one row edit; half the time meta.json is updated to match."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = root / "manifest.parquet"
    table = pq.read_table(path)
    cols = {n: table.column(n).to_numpy(zero_copy_only=False).copy() for n in table.column_names}
    n = len(cols["key"])
    a, b = (int(x) for x in rng.choice(n, 2, replace=False))
    kind = ["swap labels", "set label", "duplicate row", "delete row", "offset", "length", "crc"][
        int(rng.integers(7))
    ]
    if kind == "swap labels":
        cols["label"][[a, b]] = cols["label"][[b, a]]
    elif kind == "set label":
        cols["label"][a] = (cols["label"][a] + 1) % CLASSES
    elif kind in ("duplicate row", "delete row"):
        keep = np.insert(np.arange(n), b, a) if kind == "duplicate row" else np.delete(range(n), a)
        cols = {name: values[keep] for name, values in cols.items()}
    elif kind == "offset":
        cols["offset"][a] = cols["offset"][b]
    elif kind == "length":
        cols["length"][a] += int(rng.choice([-1, 1, 4]))
    else:
        cols["crc32"][a] ^= np.uint32(1 << int(rng.integers(32)))
    schema = table.schema
    pq.write_table(pa.table({k: pa.array(v, schema.field(k).type) for k, v in cols.items()}), path)
    consistent = bool(rng.integers(2))
    if consistent:  # a careless tool that rewrites both files
        meta = json.loads((root / "meta.json").read_text())
        meta["num_images"] = len(cols["key"])
        for s, shard in enumerate(meta["shards"]):
            shard["num_records"] = int((cols["shard"] == s).sum())
        if "manifest_crc32" in meta:
            meta["manifest_crc32"] = zlib.crc32(path.read_bytes())
        (root / "meta.json").write_text(json.dumps(meta))
    return f"manifest {kind}" + (" + meta" if consistent else "")


def meta_edit(root: Path, rng: np.random.Generator) -> str:
    path = root / "meta.json"
    meta = json.loads(path.read_text())
    keys = [
        "num_classes",
        "num_images",
        "shards",
        "labels_in_records",
        "format",
        "seed",
        "manifest_crc32",
    ]
    key = keys[int(rng.integers(len(keys)))]
    shard_key = ["name", "num_records", "rec_bytes", "records_crc32"][int(rng.integers(4))]
    values = ["30", None, [], {}, -1, 1.5, True, "../x", 0, 2**40]
    value = values[int(rng.integers(len(values)))]
    kind = ["value", "shard value", "delete", "shards empty"][int(rng.integers(4))]
    if kind == "value":
        meta[key] = value
    elif kind == "shard value":
        meta["shards"][int(rng.integers(3))][shard_key] = value
        key = f"shards[].{shard_key}"
    elif kind == "delete":
        meta.pop(key, None)
    else:
        meta["shards"] = []
    path.write_text(json.dumps(meta))
    return f"meta.json {kind} {key}"


MUTATIONS: list[Callable[[Path, np.random.Generator], str]] = [
    bit_flip,
    random_bytes,
    truncate,
    idx_edit,
    manifest_edit,
    meta_edit,
]


# ---------------------------------------------------------------------------------------------
# One case
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Outcome:
    """What the readers did with one mutated set."""

    mutation: str
    outcome: str
    detail: str = ""


def _error_problem(err: BaseException, root: Path) -> str | None:
    """Why ``err`` breaks the error contract, or None when it is a located project error."""
    if not isinstance(err, PROJECT_ERRORS):
        return "foreign exception"
    if str(root) not in str(err):
        return "unnamed error"
    if isinstance(err, CorruptRecordError) and err.key is None and err.offset is None:
        return "unnamed error"
    return None


def run_case(base: Path, ref: Reference, work: Path, seed: int) -> Outcome:
    """Copy ``base`` to ``work``, apply mutation ``seed``, run every reader; classify."""
    rng = np.random.default_rng([seed, 2026])
    root = work / f"case-{seed}"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(base, root)
    mutation = MUTATIONS[seed % len(MUTATIONS)](root, rng)
    problems: list[str] = []  # contract violations
    deviations: list[str] = []  # damage seen by a reader (errors, skips, differences)

    def guarded(name: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as err:
            deviations.append(f"{name}: {err}")
            why = "foreign exception" if name == "verify" else _error_problem(err, root)
            if why:  # verify reports problems, it never raises on bad data
                problems.append(f"{why}: {name}: {type(err).__name__}: {err}")

    found: list[str] = []

    def run_verify() -> None:
        _, bad = verify_shard_set(str(root), decode=True)
        found.extend(str(b) for b in bad)

    def run_shard_set() -> None:
        shards = ShardSet.open(root)
        for i in range(len(shards)):
            try:
                got = shards.read_image(i)
            except CorruptRecordError as err:
                deviations.append(f"ShardSet: {err}")
                if why := _error_problem(err, root):
                    problems.append(f"{why}: ShardSet.read_image: {err}")
                continue
            if got not in ref.images:
                problems.append(f"silent wrong: ShardSet.read_image({i}) label {got[1]}")

    reader_wrong: list[str] = []

    def run_readers() -> None:
        for name, payloads in ref.payloads.items():
            rec = root / f"{name}.rec"
            if not rec.exists():
                continue
            reader = RecordReader(rec, root / f"{name}.idx")
            for key, payload in payloads.items():
                try:
                    got = reader.read(key)
                except (CorruptRecordError, KeyError) as err:
                    deviations.append(f"RecordReader: {err}")
                    if why := _error_problem(err, root):
                        problems.append(f"{why}: RecordReader.read: {err}")
                    continue
                if got != payload:
                    deviations.append(f"RecordReader: key {key} of {name} differs")
                    reader_wrong.append(f"{name} key {key}")

    def run_loader() -> None:
        cfg = DataConfig(
            root=str(root),
            backend="torch",
            batch_size=BATCH,
            num_workers=0,
            image_size=SIZE,
            hflip=False,
        )
        source = build_loader(cfg, Topology(), torch.device("cpu"), seed=seed)
        for images, labels in source.epoch(0):
            pixels = ((images + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
            for img, label in zip(pixels, labels.tolist()):
                if (_digest(img), label) not in ref.samples:
                    problems.append(f"silent wrong: loader sample with label {label}")
        if source.corrupt_records:
            deviations.append(f"loader skipped {source.corrupt_records}")

    guarded("verify", run_verify)
    guarded("ShardSet", run_shard_set)
    guarded("RecordReader", run_readers)
    guarded("loader", run_loader)
    if reader_wrong and not found:
        problems.append(f"silent wrong: RecordReader {reader_wrong[0]} and verify is clean")
    if deviations and not found:
        problems.append(f"verify miss: {deviations[0]}")
    shutil.rmtree(root, ignore_errors=True)
    if problems:
        kind = next(k for k in FAILURES if problems[0].startswith(k))
        return Outcome(mutation, kind, problems[0][:400])
    return Outcome(mutation, "detected" if (found or deviations) else "no effect")


def run_fuzz(base: Path, work: Path, seeds: range) -> tuple[Counter[str], list[Outcome]]:
    """Run ``seeds``; returns outcome counts and the failing cases."""
    ref = reference(base)
    counts: Counter[str] = Counter()
    failures = []
    for seed in seeds:
        result = run_case(base, ref, work, seed)
        counts[result.outcome] += 1
        if result.outcome in FAILURES:
            failures.append(result)
    return counts, failures


def main() -> None:
    """``python -m tests.helpers.data_fuzz [CASES]``: run the fuzz and print its figures."""
    import sys
    import tempfile
    import time

    cases = int(sys.argv[1]) if len(sys.argv) > 1 else 1200
    table: Counter[tuple[str, str]] = Counter()
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        base = make_base(Path(tmp) / "base")
        ref = reference(base)
        start = time.perf_counter()
        for seed in range(cases):
            result = run_case(base, ref, Path(tmp), seed)
            table[MUTATIONS[seed % len(MUTATIONS)].__name__, result.outcome] += 1
            if result.outcome in FAILURES:
                failures.append(result)
        took = time.perf_counter() - start
    classes = ["no effect", "detected", *FAILURES]
    print(f"{cases} cases in {took:.0f} s")
    print("| mutation | cases | " + " | ".join(classes) + " |")
    print("|---|---:|" + "---:|" * len(classes))
    for kind in [*(m.__name__ for m in MUTATIONS), "all"]:
        row = [
            sum(v for (k, c), v in table.items() if c == cls and kind in (k, "all"))
            for cls in classes
        ]
        print(f"| {kind.replace('_', ' ')} | {sum(row)} | " + " | ".join(map(str, row)) + " |")
    for f in failures[:20]:
        print(f"FAIL {f.mutation}: {f.detail}")


if __name__ == "__main__":
    main()
