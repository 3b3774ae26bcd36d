"""A checkpoint's manifest: the size and SHA-256 of every file, checked before a file is read.

``manifest.json`` is written last into a checkpoint, after every rank's files are on disk and
each rank has hashed its own files back from the file system, so a checkpoint that has one
is complete and the digests describe what was written. It also records the head files'
class ranges, so a rank can tell which files it will read without opening any other.

Why SHA-256: it is in the standard library (``hashlib``, OpenSSL underneath, with the CPU's
SHA extensions where present: about 1.2 GB/s on one core here), so the check adds no
dependency. A CRC32C or xxHash would be 2-10x faster but needs a third-party package, and a
collision-resistant digest also catches a file swapped from another checkpoint of the same
size. ``tools/bench_checkpoint_verify.py`` measures what the check costs on the resume path.

The manifest protects itself with ``self_sha256``, the digest of its own canonical JSON
without that field: a flipped byte in a recorded digest is reported as a damaged manifest,
not as a damaged data file.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dist_face.checkpoint.atomic import atomic_write

MANIFEST = "manifest.json"
FORMAT = "dist_face.checkpoint"
VERSION = 1
ALGORITHM = "sha256"


class CheckpointCorrupt(RuntimeError):
    """A checkpoint file does not match its manifest, or the manifest itself is damaged.

    Attributes:
        path: the file that failed (the manifest itself when it is unreadable).
        reason: why, in a few words (``sha256 mismatch``, ``12 bytes, the manifest says 96``).
    """

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = Path(path), reason


def file_digest(path: Path) -> dict[str, Any]:
    """``{"bytes": size, "sha256": hex digest}`` of the file at ``path``.

    ``hashlib.file_digest`` reads into one reused buffer, with the GIL released while hashing.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        digest = hashlib.file_digest(f, ALGORITHM)
    return {"bytes": size, ALGORITHM: digest.hexdigest()}


def _canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Manifest:
    """A parsed, self-consistent manifest of checkpoint ``directory``.

    Attributes:
        directory: the checkpoint directory.
        step: optimizer steps done when it was written.
        world_size: ranks that wrote it.
        num_classes: C, the classes the head files cover.
        files: file name -> ``{"bytes": int, "sha256": str}``.
        shards: head file name -> its ``[start, end)`` class range.
    """

    directory: Path
    step: int
    world_size: int
    num_classes: int
    files: dict[str, dict[str, Any]]
    shards: dict[str, tuple[int, int]]

    def shard_ranges(self) -> list[tuple[int, int, Path]]:
        """``(start, end, path)`` of every head file, by start."""
        return sorted((s, e, self.directory / n) for n, (s, e) in self.shards.items())

    def verify(self, names: list[str] | None = None) -> None:
        """Check that each file of ``names`` (None: all) has its recorded size and digest.

        Raises:
            CheckpointCorrupt: the first file that is missing, unlisted, of another size or
                with another digest.
        """
        for name in self.files if names is None else names:
            want = self.files.get(name)
            path = self.directory / name
            if want is None:
                raise CheckpointCorrupt(path, f"not listed in {MANIFEST}")
            try:
                size = path.stat().st_size
                if size != want["bytes"]:
                    raise CheckpointCorrupt(
                        path, f"{size} bytes, {MANIFEST} says {want['bytes']} (truncated?)"
                    )
                got = file_digest(path)
            except FileNotFoundError:
                raise CheckpointCorrupt(path, "missing") from None
            except OSError as exc:
                raise CheckpointCorrupt(path, f"unreadable ({exc.strerror or exc})") from None
            if got[ALGORITHM] != want[ALGORITHM]:
                raise CheckpointCorrupt(path, f"{ALGORITHM} mismatch (contents changed)")

    def total_bytes(self, names: list[str] | None = None) -> int:
        """Bytes of the files ``names`` (None: all) as recorded."""
        return sum(self.files[n]["bytes"] for n in (self.files if names is None else names))


def write_manifest(
    directory: Path,
    *,
    step: int,
    world_size: int,
    num_classes: int,
    files: dict[str, dict[str, Any]],
    shards: dict[str, tuple[int, int]],
) -> Path:
    """Write ``manifest.json`` into ``directory`` atomically (temporary name, fsync, rename)."""
    body = {
        "format": FORMAT,
        "version": VERSION,
        "algorithm": ALGORITHM,
        "step": step,
        "world_size": world_size,
        "num_classes": num_classes,
        "files": {n: files[n] for n in sorted(files)},
        "shards": {n: list(shards[n]) for n in sorted(shards)},
    }
    body["self_sha256"] = hashlib.sha256(_canonical(body)).hexdigest()
    text = (json.dumps(body, indent=1, sort_keys=True) + "\n").encode()
    return atomic_write(Path(directory) / MANIFEST, lambda f: f.write(text))


def read_manifest(directory: Path) -> Manifest:
    """Parse and self-check the manifest of checkpoint ``directory``.

    Raises:
        CheckpointCorrupt: no manifest (an incomplete checkpoint, or one written before
            manifests), or one that does not parse or whose own digest does not match.
    """
    directory = Path(directory)
    path = directory / MANIFEST
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointCorrupt(path, "missing: not a complete, verifiable checkpoint") from None
    except OSError as exc:
        raise CheckpointCorrupt(path, f"unreadable ({exc.strerror or exc})") from None
    try:
        body = json.loads(text)
        own = body.pop("self_sha256")
        if hashlib.sha256(_canonical(body)).hexdigest() != own:
            raise CheckpointCorrupt(path, "its own sha256 does not match (damaged manifest)")
        if body["format"] != FORMAT or body["algorithm"] != ALGORITHM:
            raise CheckpointCorrupt(path, f"not a {FORMAT} manifest with {ALGORITHM} digests")
        return Manifest(
            directory=directory,
            step=int(body["step"]),
            world_size=int(body["world_size"]),
            num_classes=int(body["num_classes"]),
            files=dict(body["files"]),
            shards={n: (int(r[0]), int(r[1])) for n, r in body["shards"].items()},
        )
    except CheckpointCorrupt:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        # UnicodeDecodeError and json.JSONDecodeError are ValueErrors
        reason = type(exc).__name__ if not str(exc) else str(exc).splitlines()[0]
        raise CheckpointCorrupt(path, f"not a valid manifest ({reason})") from None


def verify_checkpoint(directory: Path) -> Manifest:
    """Read the manifest of ``directory`` and check every file it lists.

    Raises:
        CheckpointCorrupt: the manifest or a file does not check out.
    """
    manifest = read_manifest(directory)
    manifest.verify()
    return manifest
