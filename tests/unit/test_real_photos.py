"""Real photos as a user has them: any Pillow format, honest size handling, landmark alignment,
one-line hints for a raw folder, a missing extra and an unknown name."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dist_face.config import ConfigError, load_config
from dist_face.config.resolve import check_extras
from dist_face.data.format.shards import ShardSet
from dist_face.data.loading.image_fit import fit_image
from dist_face.data.packing.aligned import align_image, read_landmarks
from dist_face.eval.align import ARCFACE_TEMPLATE, similarity_transform
from dist_face.eval.verification import fold_problem, kfold_accuracy, single_class_folds
from tests.helpers.pgm_faces import make_pgm_faces, write_landmarks

REPO = Path(__file__).resolve().parents[2]


def _pack(*argv: str) -> int:
    from dist_face.cli.pack import main

    return main([*argv, "--quiet"])


@pytest.fixture
def photos(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """4 people × 3 grayscale 92×112 PGM photos, plus odd files a real folder holds."""
    root = tmp_path / "faces"
    points = make_pgm_faces(root, people=4, per_person=3)
    (root / "README").write_text("ORL-style database\n")
    (root / "s1" / "notes.txt").write_text("glasses\n")
    with Image.open(root / "s2" / "1.pgm") as im:  # a photo without an extension: by content
        im.save(root / "s2" / "scan", format="TIFF")
    (root / "s5").mkdir()  # a person with a single photo
    with Image.open(root / "s3" / "1.pgm") as im:
        im.save(root / "s5" / "1.gif")
    return root, points


def test_a_pgm_folder_packs_as_it_is_and_the_report_says_what_was_found(
    photos, tmp_path, capsys
) -> None:
    root, _ = photos
    out = tmp_path / "packed"
    assert _pack(str(root), str(out)) == 0
    shards = ShardSet.open(out)
    assert (len(shards), shards.num_classes) == (4 * 3 + 1 + 1, 5)
    sources = set(shards.manifest.column("source").to_pylist())
    assert {"s2/scan", "s5/1.gif", "s1/1.pgm"} <= sources
    captured = capsys.readouterr()
    stdout = captured.out
    assert "ignored 1 file(s) not an image Pillow recognises (by content) (.txt 1)" in stdout
    assert "ignored 1 file(s) outside the identity folders ((none) 1)" in stdout
    assert "1 identities have a single image" in stdout
    warnings = [line for line in captured.err.splitlines() if "WARNING" in line]
    assert len(warnings) == 1, warnings  # one warning naming the size, what happens, what to do
    assert "not 112×112 (width×height: 92×112 14)" in warnings[0]
    assert "centre-cropped" in warnings[0] and "--landmarks" in warnings[0]
    report = (out / "pack_report.txt").read_text()
    assert "# sizes before packing (width×height): 92×112 14" in report
    assert "# channels: grayscale 13, palette 1" in report
    assert "# 1 identities with a single image" in report
    assert ".txt 1" in report and "(none) 1" in report


def test_resize_modes_keep_or_drop_the_aspect_ratio() -> None:
    # a 40×80 photo holding a white 20×40 box (1:2) at the left of its middle half
    pixels = np.zeros((80, 40), np.uint8)
    pixels[20:60, :20] = 255

    def box(mode: str) -> tuple[int, int, np.ndarray]:
        out = np.asarray(fit_image(Image.fromarray(pixels), 10, mode))
        assert out.shape == (10, 10, 3)
        white = out[..., 0] >= 200
        return int(white.any(1).sum()), int(white.any(0).sum()), out[..., 0]

    height, width, crop = box("crop")  # the shorter side fills 10 px, the middle is kept
    assert (height, width) == (10, 5) and crop[1:9, 0].min() == 255
    height, width, pad = box("pad")  # the longer side fills 10 px, black around it
    assert (height, width) == (4, 2) and pad[:, :2].max() == 0  # the 1:2 box stays 1:2
    height, width, _ = box("stretch")  # each side on its own: the 1:2 box turns about 1:1
    assert (height, width) == (4, 5)


def test_the_similarity_fit_recovers_a_hand_computed_transform() -> None:
    # photo = 0.6 · R(10°) · crop + (20, 30): the fit of the photo's points to the template
    # is the inverse map, which this test writes out by hand
    c, s = 0.6 * np.cos(np.deg2rad(10)), 0.6 * np.sin(np.deg2rad(10))
    photo_points = ARCFACE_TEMPLATE @ np.array([[c, -s], [s, c]]).T + [20.0, 30.0]
    det = c * c + s * s
    a, b = c / det, -s / det  # the inverse rotation-scale [[a, -b], [b, a]]
    expected = np.array([[a, -b, -(a * 20 - b * 30)], [b, a, -(b * 20 + a * 30)]], dtype=np.float64)
    assert np.allclose(similarity_transform(photo_points), expected, atol=1e-9)


def test_landmark_alignment_equals_insightface_norm_crop_within_one_grey_level(
    photos, tmp_path
) -> None:
    face_align = pytest.importorskip("insightface.utils.face_align")
    root, points = photos
    csv = write_landmarks(tmp_path / "landmarks.csv", points)
    out = tmp_path / "aligned"
    assert _pack(str(root), str(out), "--landmarks", str(csv)) == 0
    shards = ShardSet.open(out)
    sources = shards.manifest.column("source").to_pylist()
    worst = 0
    for i, where in enumerate(sources):
        with Image.open(io.BytesIO(shards.read_image(i)[0])) as im:
            ours = np.asarray(im)
        assert ours.shape == (112, 112)  # grayscale stays grayscale
        with Image.open(root / where) as im:
            gray = np.asarray(im)
        reference = face_align.norm_crop(np.repeat(gray[..., None], 3, 2), points[where])
        worst = max(worst, int(np.abs(ours.astype(int) - reference[..., 0].astype(int)).max()))
    assert worst <= 1, worst
    # the photos without a row (the TIFF scan and the GIF) are left out and reported
    assert sorted(set(points)) == sorted(sources)
    report = (out / "pack_report.txt").read_text()
    assert "# 2 image(s) left out by alignment" in report
    assert f"s2/scan\tno row in {csv}" in report
    assert "# aligned to the 112×112 ArcFace template: yes" in report


def test_the_landmarks_file_names_its_bad_line(tmp_path) -> None:
    bad = tmp_path / "lm.csv"
    bad.write_text("image,x1\na.pgm,1,2,3,4,5,6,7,8,9,10\nb.pgm,1,2,3\n")
    with pytest.raises(ValueError, match=r"lm\.csv:1: expected image path and 10 coordinates"):
        read_landmarks(str(bad))
    bad.write_text("a.pgm,1,2,3,4,5,6,7,8,9,10\nb.pgm,1,2,3,4,5,6,7,8,9,x\n")
    with pytest.raises(ValueError, match=r"lm\.csv:2: coordinates .* are not numbers"):
        read_landmarks(str(bad))


def test_alignment_keeps_rgb_photos_in_colour(tmp_path) -> None:
    rgb = np.zeros((112, 92, 3), np.uint8)
    rgb[..., 0] = 200
    data = io.BytesIO()
    Image.fromarray(rgb).save(data, format="PPM")
    out = align_image(data.getvalue(), ARCFACE_TEMPLATE * 0.8 + [2, 10])
    assert out.shape == (112, 112, 3) and out[56, 56].tolist() == [200, 0, 0]


def test_a_raw_folder_as_data_root_through_the_launcher_is_one_line(photos, tmp_path) -> None:
    root, _ = photos
    env = {**os.environ, "PYTHONPATH": str(REPO), "CONFIG": "debug_cpu", "NPROC_PER_NODE": "2"}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    done = subprocess.run(
        ["bash", str(REPO / "launch" / "torchrun.sh"), f"--data.root={root}", "--eval.targets=[]"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"bad configuration: data.root: {root} is an image folder; pack it first: "
        f"dist-face-pack {root} OUT"
    ]
    assert not (tmp_path / "runs").exists()


def test_the_trainer_itself_names_the_packer_for_a_raw_folder(photos) -> None:
    from dist_face.data.loading.loader import open_dataset

    root, _ = photos
    with pytest.raises(Exception, match=r"is an image folder; pack it first: dist-face-pack"):
        open_dataset(str(root))


def test_safetensors_without_the_extra_is_one_line_and_writes_nothing(
    tmp_path, capsys, monkeypatch
) -> None:
    from dist_face.cli.export import main as export_main
    from dist_face.models import create, save_backbone

    ckpt = save_backbone(create("tiny", embedding_size=8), tmp_path / "model.pt", "tiny",
                         embedding_size=8)  # fmt: skip
    monkeypatch.setitem(sys.modules, "safetensors", None)  # what `import` sees when absent
    out = tmp_path / "model.onnx"
    assert export_main(["--backbone", str(ckpt), "--out", str(out), "--safetensors"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith(
        "error: --safetensors needs safetensors, which is not installed: "
        "pip install 'dist_face[export]'"
    ), err
    assert not out.exists()  # nothing half-written


@pytest.mark.parametrize(
    ("module", "extra", "argv"),
    [
        ("matplotlib", "report", ["--run", "runs/x", "--out", "c.png"]),
        ("onnxruntime", "export", ["--backbone", "m.pt", "--out", "m.onnx"]),
        ("matplotlib", "loss-study", ["--out", "study"]),
    ],
)
def test_every_tool_names_the_extra_it_misses(
    module, extra, argv, tmp_path, capsys, monkeypatch
) -> None:
    from dist_face.cli.export import main as export_main
    from dist_face.cli.loss_study import main as study_main
    from dist_face.cli.report import main as report_main

    monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.chdir(tmp_path)
    main = {"report": report_main, "export": export_main, "loss-study": study_main}[extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    wanted = "report" if extra == "loss-study" else extra
    assert len(err) == 1 and err[0].endswith(f"pip install 'dist_face[{wanted}]'"), err
    assert not any(tmp_path.iterdir())


def test_tensorboard_without_the_extra_is_a_configuration_error(monkeypatch) -> None:
    cfg = load_config("debug_cpu", ["--metrics.tensorboard=true"])
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(ConfigError, match=r"pip install 'dist_face\[tensorboard\]'"):
        check_extras(cfg)


@pytest.mark.parametrize(
    ("flag", "override", "message"),
    [
        ("--print-config", "--head.margin=arcfce", "head.margin: unknown margin 'arcfce'; did "
         "you mean 'arcface'?"),
        ("--help-config", "--model.name=iresnet5O", "model.name: unknown backbone 'iresnet5O'"),
        ("--print-config", "--data.backend=dail", "data.backend: must be one of ['auto', 'dali', "
         "'torch', 'synthetic'], got 'dail'; did you mean 'dali'?"),
    ],
)  # fmt: skip
def test_printing_a_config_validates_its_names(flag, override, message, capsys) -> None:
    from dist_face.train.entry import main

    assert main(["--config", "debug_cpu", flag, override]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert captured.out == ""


def test_a_pair_list_sorted_by_label_is_warned_about(caplog) -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat([True, False], 100)  # all genuine pairs first
    scores = np.where(labels, 0.6, 0.2) + rng.normal(0, 0.2, labels.size)
    assert single_class_folds(labels) == 10
    with caplog.at_level(logging.WARNING):
        kfold_accuracy(scores, labels)
    assert "sorted by label (every genuine pair on one side); 10 of 10 contiguous folds" in (
        caplog.text
    )
    # blocks of 20 genuine then 20 impostor: sorted in places, not as a whole
    caplog.clear()
    assert fold_problem(np.tile(np.repeat([True, False], 20), 5)).startswith(
        "the pair list looks sorted by label; 10 of 10"
    )
    # shuffled, or LFW's layout (each tenth half genuine, half impostor), or too few pairs
    # per fold to tell: no warning
    for fine in (rng.permutation(labels), np.tile(np.repeat([True, False], 10), 10)):
        assert fold_problem(fine) is None
    assert fold_problem(np.array([True, False] * 6)) is None
    with caplog.at_level(logging.WARNING):
        kfold_accuracy(scores, rng.permutation(labels))
    assert "contiguous folds" not in caplog.text


def test_the_debug_recipe_makes_its_data_on_first_use_only_when_it_trains(
    tmp_path, monkeypatch
) -> None:
    configs = tmp_path / "clone" / "configs"
    configs.mkdir(parents=True)
    (configs / "debug_cpu.py").write_text((REPO / "configs" / "debug_cpu.py").read_text())
    monkeypatch.setenv("DIST_FACE_CONFIGS", str(configs))
    monkeypatch.setenv("DIST_FACE_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "cache" / "debug_cpu"
    cfg = load_config("debug_cpu")  # --print-config, tests: nothing written
    assert cfg.data.root == str(data / "shards") and not data.exists()
    load_config("debug_cpu", prepare=True)  # what the trainer calls
    shards = ShardSet.open(data / "shards")
    assert (len(shards), shards.num_classes) == (320, 40)
    assert (data / "val.bin").is_file()
    assert not (tmp_path / "clone" / "data").exists()  # nothing written inside the checkout


def test_bin_evaluation_fits_other_sizes_and_says_so_once(photos, tmp_path, capsys, monkeypatch):
    import dist_face.cli.evaluate as evaluate
    from dist_face.eval.bin_format import save_bin
    from dist_face.models import create, save_backbone

    root, points = photos
    files = sorted(points) * 2  # 12 photos, 92×112 grayscale, in 12 pairs
    save_bin(tmp_path / "pgm.bin", [(root / f).read_bytes() for f in files], [True, False] * 6)
    ckpt = save_backbone(create("tiny", embedding_size=8), tmp_path / "model.pt", "tiny",
                         embedding_size=8)  # fmt: skip
    monkeypatch.setattr(evaluate, "_DECODE_CHUNK", 5)  # 12 distinct images: 3 chunks, 1 warning
    argv = ["--backbone", str(ckpt), "--bin", str(tmp_path / "pgm.bin"), "--quiet"]
    assert evaluate.main([*argv, "--resize-mode", "pad"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "WARNING" in line]
    assert len(warnings) == 1, warnings
    assert "12 of 12 evaluation images are not 112×112 (92×112 12)" in warnings[0]
    assert "padded with black" in warnings[0]


def test_identification_takes_pgm_probes_of_any_size(photos, tmp_path, capsys) -> None:
    from dist_face.cli.identify import main as identify_main
    from dist_face.models import create, save_backbone

    root, _ = photos
    ckpt = save_backbone(create("tiny", embedding_size=8), tmp_path / "model.pt", "tiny",
                         embedding_size=8)  # fmt: skip
    argv = ["--backbone", str(ckpt), "--probes", str(root), "--out", str(tmp_path / "ident")]
    assert identify_main([*argv, "--resize-mode", "stretch"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "WARNING" in line]
    # 13: every photo with an image extension (the extension-less scan is a packing case)
    assert len(warnings) == 1, warnings
    assert "13 of 13 evaluation images are not 112×112 (92×112 13)" in warnings[0]
    assert "stretched" in warnings[0]
    assert (tmp_path / "ident" / "report.json").is_file()


def test_an_aligned_grayscale_pack_reads_the_same_with_dali_and_torch(photos, tmp_path) -> None:
    """The aligned crops are grayscale PNGs: DALI's CPU decoder gives the torch loader's pixels."""
    pytest.importorskip("nvidia.dali", reason="nvidia-dali is not installed (extra 'dali')")
    from dist_face.config import DataConfig
    from dist_face.data.loading.loader import build_loader
    from dist_face.dist import Topology

    root, points = photos
    csv = write_landmarks(tmp_path / "landmarks.csv", points)
    out = tmp_path / "aligned"
    assert _pack(str(root), str(out), "--landmarks", str(csv)) == 0

    def images(backend: str) -> set[bytes]:
        cfg = DataConfig(root=str(out), backend=backend, batch_size=4, num_workers=1, hflip=False)
        topo = Topology(rank=0, world_size=1, local_rank=0, local_world_size=1)
        seen = set()
        for batch, _ in build_loader(cfg, topo, torch.device("cpu"), seed=0).epoch(0):
            pixels = ((batch + 1) * 127.5).round().to(torch.uint8)
            assert batch.shape[1:] == (3, 112, 112)
            assert torch.equal(pixels[:, 0], pixels[:, 2])  # grey: R = G = B
            seen |= {p.numpy().tobytes() for p in pixels}
        return seen

    dali, torch_images = images("dali"), images("torch")
    assert len(dali) >= 8 and dali <= torch_images


def _eval_images(rank: int, world: int, out: str, target: str, mode: str) -> np.ndarray:
    from dist_face.dist import Topology
    from dist_face.train.build import build_trainer
    from dist_face.train.hooks import EvalHook

    overrides = ["--data.root=synthetic", "--data.num_classes=8", "--data.synthetic_samples=64",
                 f"--output_root={out}", f"--eval.targets=[{target}]",
                 f"--data.resize_mode={mode}"]  # fmt: skip
    trainer, _ = build_trainer(load_config("debug_cpu", overrides), Topology.from_env(),
                               torch.device("cpu"))  # fmt: skip
    (hook,) = [h for h in trainer.hooks if isinstance(h, EvalHook)]
    hook.before_train(trainer)
    return hook._data["pgm"][0]


def test_evaluation_during_training_fits_pairs_under_data_resize_mode(photos, tmp_path):
    from dist_face.eval.bin_format import decode_images, load_bin, save_bin
    from tests.helpers.distributed import run_distributed

    root, points = photos
    files = sorted(points)[:4]  # 92×112 photos
    path = save_bin(tmp_path / "pgm.bin", [(root / f).read_bytes() for f in files], [True, False])
    (decoded,) = run_distributed(_eval_images, 1, str(tmp_path / "runs"), str(path), "pad")
    images = load_bin(path)[0]
    assert np.array_equal(decoded, decode_images(images, mode="pad"))
    assert not np.array_equal(decoded, decode_images(images, mode="crop"))
