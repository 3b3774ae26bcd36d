"""Cross-check with MXNet itself: same bytes written, and MXNet reads our files.

MXNet 1.9.1 needs numpy < 1.24, so it lives in its own environment and runs in a subprocess.
The test is skipped unless DIST_FACE_MXNET_PYTHON names that interpreter:

    python3.11 -m venv /tmp/mxnet-venv
    /tmp/mxnet-venv/bin/pip install "mxnet==1.9.1" "numpy<1.24"
    DIST_FACE_MXNET_PYTHON=/tmp/mxnet-venv/bin/python \
        python -m pytest tests/unit/test_mxnet_oracle.py
"""

from __future__ import annotations

import os
import pickle
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest

from dist_face.data.format.recordio import RecordReader, RecordWriter, pack_record, unpack_record

MXNET_PYTHON = os.environ.get("DIST_FACE_MXNET_PYTHON")
pytestmark = pytest.mark.skipif(
    not MXNET_PYTHON, reason="set DIST_FACE_MXNET_PYTHON to a python with mxnet 1.9.1"
)

MAGIC = bytes.fromhex("0a23d7ce")
_RNG = np.random.default_rng(0)
# (key, label: float | list[float] | None for a raw payload, bytes, id)
CASES = [
    (0, 3.0, b"\xff\xd8jpeg", 5),
    (1, [7.0, 1.0, 0.5], b"img", 9),
    (2, None, b"", 0),  # an empty raw payload
    (3, 2.0, b"", 1),  # a 0-byte image
    (4, 1.0, b"\0" * 8 + MAGIC * 3 + b"tail", 2),  # split into 4 parts
    (5, None, MAGIC + b"xyz" + MAGIC, 0),  # raw payload starting with the magic
    (6, [1.0, 2.0], MAGIC * 2, 3),
    (9, 4.0, _RNG.integers(0, 256, 50_001, dtype=np.uint8).tobytes(), 7),
]

CHILD = textwrap.dedent(
    """
    import pickle, sys
    import numpy as np
    import mxnet.recordio as r

    cases, out_dir, ours = pickle.load(open(sys.argv[1], "rb"))
    w = r.MXIndexedRecordIO(out_dir + "/mx.idx", out_dir + "/mx.rec", "w")
    for key, label, data, rid in cases:
        w.write_idx(key, data if label is None else r.pack(r.IRHeader(0, label, rid, 0), data))
    w.close()
    rd = r.MXIndexedRecordIO(ours + ".idx", ours + ".rec", "r")
    got = []
    for key, label, data, rid in cases:
        s = rd.read_idx(key)
        if label is None:
            got.append((key, s))
        else:
            h, img = r.unpack(s)
            lab = np.asarray(h.label, dtype=np.float64).ravel().tolist()
            got.append((key, (int(h.flag), lab, int(h.id), img)))
    pickle.dump(got, open(out_dir + "/got.pkl", "wb"), protocol=2)
    """
)


def payload(label, data: bytes, rid: int) -> bytes:
    return data if label is None else pack_record(label, data, id=rid)


@pytest.mark.timeout(120)
def test_mxnet_writes_our_bytes_and_reads_our_files(tmp_path: Path) -> None:
    ours = tmp_path / "ours"
    with RecordWriter(f"{ours}.rec", f"{ours}.idx") as w:
        for key, label, data, rid in CASES:
            w.write(key, payload(label, data, rid))
    (tmp_path / "cases.pkl").write_bytes(pickle.dumps((CASES, str(tmp_path), str(ours)), 2))
    (tmp_path / "child.py").write_text(CHILD)
    subprocess.run(
        [MXNET_PYTHON, str(tmp_path / "child.py"), str(tmp_path / "cases.pkl")],
        check=True, capture_output=True, timeout=100,
    )  # fmt: skip
    # 1. MXNet writes exactly the bytes we write.
    assert (tmp_path / "mx.rec").read_bytes() == Path(f"{ours}.rec").read_bytes()
    assert (tmp_path / "mx.idx").read_text() == Path(f"{ours}.idx").read_text()
    # 2. MXNet reads our records back as they went in.
    got = dict(pickle.loads((tmp_path / "got.pkl").read_bytes()))
    for key, label, data, rid in CASES:
        if label is None:
            assert got[key] == data
        else:
            labels = [float(x) for x in np.ravel(label)]
            assert got[key] == ((len(labels) if isinstance(label, list) else 0), labels, rid, data)
    # 3. And we read MXNet's file.
    theirs = RecordReader(tmp_path / "mx.rec")
    for key, label, data, rid in CASES:
        raw = theirs.read(key)
        assert raw == payload(label, data, rid)
        if label is not None:
            assert unpack_record(raw)[1] == data
