"""``.bin`` evaluation against ``score-pairs`` on the same pairs, measured in one run.

A pair file reuses its images: in a list of 6,000 pairs over a few hundred people an image
appears in many pairs. ``dist-face-score-pairs`` decodes and embeds each distinct image once;
``dist-face-evaluate --bin`` does the same since the ``.bin``'s identical images are found by
their bytes. This writes ``--images`` aligned 112×112 PNG faces, ``--pairs`` pairs over them
(each image in about 2·pairs/images pairs), the CSV list and the ``.bin`` of the same pairs, and
times, best of ``--repeat``:

1. ``dist-face-score-pairs --pairs list.csv`` (the baseline),
2. ``dist-face-evaluate --bin pairs.bin``,
3. the former ``.bin`` path: every one of the 2·P stored images decoded and embedded.

It prints each time and its ratio to the baseline, and checks that both commands give the same
EER.

Example:  python tools/bench_eval_bin.py --images 300 --pairs 1500 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import logging
import pickle
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dist_face.cli import evaluate, score_pairs
from dist_face.eval.bin_format import decode_images, load_bin
from dist_face.eval.verification import evaluate_model
from dist_face.models import create, save_backbone


def _write(tmp: Path, images: int, pairs: int, seed: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    people = rng.integers(0, max(2, images // 5), images)  # ~5 photos a person
    base = rng.integers(0, 256, (people.max() + 1, 14, 14, 3)).astype(np.float32)
    names = []
    for i in range(images):
        face = base[people[i]] + rng.normal(0, 25, (14, 14, 3))
        im = Image.fromarray(np.clip(face, 0, 255).astype(np.uint8)).resize((112, 112))
        names.append(f"{i}.png")
        im.save(tmp / names[-1])
    rows, data, issame = [], [], []
    for _ in range(pairs):
        a = int(rng.integers(images))
        same = rng.random() < 0.5 and (people == people[a]).sum() > 1
        pool = np.flatnonzero((people == people[a]) != (not same))
        b = int(rng.choice(pool[pool != a])) if same else int(rng.choice(pool))
        rows.append(f"{names[a]},{names[b]},{int(people[a] == people[b])}")
        issame.append(bool(people[a] == people[b]))
        data += [(tmp / names[a]).read_bytes(), (tmp / names[b]).read_bytes()]
    (tmp / "pairs.csv").write_text("\n".join(rows) + "\n")
    with open(tmp / "pairs.bin", "wb") as f:
        pickle.dump((data, issame), f, protocol=4)
    return tmp / "pairs.csv", tmp / "pairs.bin"


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backbone", default="tiny")
    p.add_argument("--images", type=int, default=300)
    p.add_argument("--pairs", type=int, default=1500)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    logging.disable(logging.WARNING)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        csv, binf = _write(tmp, args.images, args.pairs, args.seed)
        torch.manual_seed(0)
        ckpt = save_backbone(create(args.backbone), tmp / "model.pt", args.backbone)
        common = ["--backbone", str(ckpt)]

        def pairs_cmd() -> None:
            score_pairs.main([*common, "--pairs", str(csv), "--out", str(tmp / "s.csv")])

        def bin_cmd() -> None:
            evaluate.main([*common, "--bin", str(binf), "--out", str(tmp / "e.json"), "--quiet"])

        def every_image() -> None:
            images, issame = load_bin(binf)
            model = create(args.backbone)
            evaluate_model(model, decode_images(images), np.asarray(issame), 64)

        base = _best(pairs_cmd, args.repeat)
        now = _best(bin_cmd, args.repeat)
        before = _best(every_image, args.repeat)
        eer_pairs = json.loads((tmp / "s.json").read_text())["eer"]
        eer_bin = json.loads((tmp / "e.json").read_text())["pairs/trained"]["eer"]
    print(f"{args.pairs} pairs over {args.images} images, backbone {args.backbone}, best of "
          f"{args.repeat}")  # fmt: skip
    print(f"score-pairs (baseline)        {base:7.2f} s  1.00x")
    print(f"evaluate --bin                {now:7.2f} s  {now / base:.2f}x")
    print(f"every stored image (before)   {before:7.2f} s  {before / base:.2f}x")
    print(f"EER score-pairs {eer_pairs:.4f}  evaluate --bin {eer_bin:.4f}")
    return 0 if abs(eer_pairs - eer_bin) < 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main())
