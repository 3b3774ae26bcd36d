"""IJB 1:1 and 1:N on a synthetic set in the official layout, against a float64 reference.

The reference below re-implements the protocol from its definition (per-template loops,
brute-force thresholds, the Mann-Whitney form of the AUC) in float64, independently of
dist_face.eval.ijb and dist_face.eval.identification.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dist_face.cli.ijb import main as ijb_main
from dist_face.data.synthetic.ijb import IJBSpec, generate_ijb
from dist_face.eval.align import ARCFACE_TEMPLATE, align_face, similarity_transform
from dist_face.models import create, load_backbone, save_backbone

FARS = ("1e-06", "1e-05", "0.0001", "0.001", "0.01", "0.1")


@pytest.fixture(scope="module")
def ijb_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = IJBSpec(identities=8, templates_per_identity=3, max_medias=2, max_frames=2)
    return generate_ijb(tmp_path_factory.mktemp("ijb") / "IJBC", spec, workers=2)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = create("tiny", embedding_size=16)
    return save_backbone(
        model, tmp_path_factory.mktemp("model") / "model.pt", "tiny", embedding_size=16
    )


@pytest.fixture(scope="module")
def ijb_out(ijb_root: Path, backbone: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ijb_out")
    argv = ["--backbone", str(backbone), "--image-path", str(ijb_root), "--out", str(out)]
    assert ijb_main([*argv, "--target", "IJBC", "--batch-size", "16", "--no-progress"]) == 0
    return out


# ---------------------------------------------------------------- float64 reference protocol


def _read(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


def reference_protocol(root: Path, feats: np.ndarray, flip=True, norm=True, det=True) -> dict:
    """eval_ijbc.py's algorithm, written from its description with loops, in float64."""
    tid_mid = _read(root / "meta/ijbc_face_tid_mid.txt")
    pts = _read(root / "meta/ijbc_name_5pts_score.txt")
    pairs = _read(root / "meta/ijbc_template_pair_label.txt")
    faceness = np.array([float(r[11]) for r in pts])
    f = feats.astype(np.float64)
    d = f.shape[1] // 2
    img = f[:, :d] + f[:, d:] if flip else f[:, :d]
    if not norm:
        img = img / np.linalg.norm(img, axis=1, keepdims=True)
    if det:
        img = img * faceness[:, None]
    media: dict[tuple[int, int], list[np.ndarray]] = {}
    for (_, tid, mid), row in zip(tid_mid, img):
        media.setdefault((int(tid), int(mid)), []).append(row)
    template: dict[int, np.ndarray] = {}
    for (tid, _), rows in media.items():
        template[tid] = template.get(tid, 0) + np.mean(rows, axis=0)
    template = {t: v / np.linalg.norm(v) for t, v in template.items()}
    scores = np.array([template[int(a)] @ template[int(b)] for a, b, _ in pairs])
    labels = np.array([int(y) for _, _, y in pairs])
    pos, neg = scores[labels == 1], scores[labels == 0]
    tar = {}
    for far in FARS:
        best = 0.0
        for t in [np.inf, *scores]:  # accept score >= t
            if np.mean(neg >= t) <= float(far):
                best = max(best, float(np.mean(pos >= t)))
        tar[far] = best
    auc = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    return {"scores": scores, "tar": tar, "auc": auc, "templates": template}


def reference_1n(root: Path, template: dict[int, np.ndarray], galleries=("G1", "G2")) -> dict:
    def subjects(name: str) -> dict[int, int]:
        with open(root / f"meta/ijbc_1N_{name}.csv") as fh:
            rows = list(csv.reader(fh))[1:]
        return {int(r[0]): int(r[1]) for r in rows}

    probes = subjects("probe_mixed")
    out = {}
    for g in galleries:
        gallery = subjects(f"gallery_{g}")
        mated, non_mated_top = [], []
        for ptid, psid in probes.items():
            s = {gt: float(template[ptid] @ template[gt]) for gt in gallery}
            mates = [v for gt, v in s.items() if gallery[gt] == psid]
            others = [v for gt, v in s.items() if gallery[gt] != psid]
            if mates:
                m = max(mates)
                mated.append((m, max(others), 1 + sum(o >= m for o in others)))
            else:
                non_mated_top.append(max(others))
        top = sorted(non_mated_top, reverse=True)
        tpir = {}
        for p in (0.01, 0.1):
            k = int(np.floor(p * len(top)))
            thr = top[k] if k < len(top) else -np.inf
            tpir[f"{p:g}"] = np.mean([m > thr and m > nm for m, nm, _ in mated])
        cmc = {f"rank{k}": np.mean([r <= k for *_, r in mated]) for k in (1, 5, 10)}
        out[g] = {"tpir_at_fpir": tpir, "cmc": cmc}
    return out


# ----------------------------------------------------------------------------------- tests


def test_synthetic_set_has_the_official_layout(ijb_root: Path) -> None:
    meta = ijb_root / "meta"
    tid_mid = _read(meta / "ijbc_face_tid_mid.txt")
    pts = _read(meta / "ijbc_name_5pts_score.txt")
    pairs = _read(meta / "ijbc_template_pair_label.txt")
    assert len(tid_mid) == len(pts) and all(len(r) == 12 for r in pts)
    assert [r[0] for r in tid_mid] == [r[0] for r in pts]
    assert all((ijb_root / "loose_crop" / r[0]).is_file() for r in tid_mid)
    labels = [int(r[2]) for r in pairs]
    assert 0 < sum(labels) < len(labels)
    templates = {int(r[1]) for r in tid_mid}
    assert len(templates) == 8 * 3
    medias_per_template = {}
    for _, tid, mid in tid_mid:
        medias_per_template.setdefault(tid, set()).add(mid)
    assert max(len(m) for m in medias_per_template.values()) > 1  # several media somewhere
    g1 = {r[1] for r in csv.reader(open(meta / "ijbc_1N_gallery_G1.csv"))} - {"SUBJECT_ID"}
    g2 = {r[1] for r in csv.reader(open(meta / "ijbc_1N_gallery_G2.csv"))} - {"SUBJECT_ID"}
    probes = {r[1] for r in csv.reader(open(meta / "ijbc_1N_probe_mixed.csv"))} - {"SUBJECT_ID"}
    assert g1 and g2 and not g1 & g2 and probes == g1 | g2


def test_similarity_fit_matches_umeyama() -> None:
    rng = np.random.default_rng(0)
    src = ARCFACE_TEMPLATE * 1.3 + rng.normal(0, 6, size=(5, 2)) + 20
    m = similarity_transform(src)
    # Umeyama (1991) by SVD of the cross-covariance, reflection excluded
    mu_s, mu_d = src.mean(0), ARCFACE_TEMPLATE.mean(0)
    xs, xd = src - mu_s, ARCFACE_TEMPLATE - mu_d
    u, sig, vt = np.linalg.svd(xd.T @ xs / len(src))
    sign = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt))])
    r = u @ sign @ vt
    scale = np.trace(np.diag(sig) @ sign) / (xs**2).sum(1).mean()
    np.testing.assert_allclose(m[:, :2], scale * r, atol=1e-9)
    np.testing.assert_allclose(m[:, 2], mu_d - scale * r @ mu_s, atol=1e-7)


def test_alignment_recovers_the_rendered_face() -> None:
    from dist_face.data.synthetic.ijb import place_face

    rng = np.random.default_rng(1)
    face = (rng.random((112, 112, 3)) * 255).astype(np.uint8)
    face = np.asarray(Image.fromarray(face).resize((28, 28)).resize((112, 112)))  # smooth
    crop, points = place_face(face, rng, 160)
    aligned = align_face(crop, points)
    inner = (slice(30, 82), slice(30, 82))  # away from the border the warp fills
    assert np.abs(aligned[inner].astype(int) - face[inner].astype(int)).mean() < 12


def test_features_are_the_backbone_on_aligned_faces_and_mirrors(
    ijb_root: Path, backbone: Path, ijb_out: Path
) -> None:
    feats = np.load(ijb_out / "img_feats.npy")
    pts = _read(ijb_root / "meta/ijbc_name_5pts_score.txt")
    assert feats.shape == (len(pts), 32) and feats.dtype == np.float32
    np.testing.assert_allclose(
        np.load(ijb_out / "faceness.npy"), [float(r[11]) for r in pts], rtol=1e-6
    )
    model = load_backbone(backbone).eval()
    for row in (0, len(pts) // 2, len(pts) - 1):
        image = np.asarray(Image.open(ijb_root / "loose_crop" / pts[row][0]).convert("RGB"))
        face = align_face(image, np.array(pts[row][1:11], float).reshape(5, 2))
        x = torch.from_numpy(face).permute(2, 0, 1)[None].float() / 255 * 2 - 1
        with torch.no_grad():
            want = torch.cat([model(x), model(torch.flip(x, dims=[3]))], 1)[0].numpy()
        np.testing.assert_allclose(feats[row], want, rtol=1e-4, atol=1e-5)


def test_scores_tars_and_1n_match_the_float64_reference(ijb_root: Path, ijb_out: Path) -> None:
    report = json.loads((ijb_out / "report.json").read_text())
    ref = reference_protocol(ijb_root, np.load(ijb_out / "img_feats.npy"))
    scores = np.load(ijb_out / "scores.npy")
    assert scores.shape == (len(ref["scores"]),)
    np.testing.assert_allclose(scores, ref["scores"], atol=1e-5)
    assert list(report["tar_at_far"]) == list(FARS)
    for far in FARS:
        assert report["tar_at_far"][far] == pytest.approx(ref["tar"][far])
    assert report["auc"] == pytest.approx(ref["auc"])
    ref_1n = reference_1n(ijb_root, ref["templates"])
    got = report["identification_1n"]
    for g in ("G1", "G2"):
        assert got["galleries"][g]["tpir_at_fpir"] == pytest.approx(ref_1n[g]["tpir_at_fpir"])
        assert got["galleries"][g]["cmc"] == pytest.approx(ref_1n[g]["cmc"])
    mean_rank1 = (ref_1n["G1"]["cmc"]["rank1"] + ref_1n["G2"]["cmc"]["rank1"]) / 2
    assert got["mean"]["cmc"]["rank1"] == pytest.approx(mean_rank1)
    assert (ijb_out / "roc.png").stat().st_size > 0 and (ijb_out / "det.png").stat().st_size > 0


def _separable_features(root: Path, noise: float) -> np.ndarray:
    """Features whose identity is the image name's subject, plus noise: a non-trivial ROC."""
    rng = np.random.default_rng(5)
    names = [r[0] for r in _read(root / "meta/ijbc_face_tid_mid.txt")]
    centres = rng.normal(size=(64, 8))
    subj = np.array([int(n.split("_")[0]) for n in names])
    feats = centres[subj] + noise * rng.normal(size=(len(names), 8))
    return np.concatenate([feats, feats + 0.1 * rng.normal(size=feats.shape)], 1).astype(np.float32)


@pytest.mark.parametrize("flags", [[], ["--no-flip"], ["--no-norm-score"], ["--no-detector-score"]])
def test_protocol_options_match_the_reference(
    ijb_root: Path, backbone: Path, tmp_path: Path, flags: list[str]
) -> None:
    feats = _separable_features(ijb_root, noise=1.0)
    np.save(tmp_path / "feats.npy", feats)
    argv = ["--backbone", str(backbone), "--image-path", str(ijb_root), "--out", str(tmp_path)]
    assert ijb_main([*argv, "--features", str(tmp_path / "feats.npy"), "--no-plot", *flags]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    ref = reference_protocol(
        ijb_root,
        feats,
        flip="--no-flip" not in flags,
        norm="--no-norm-score" not in flags,
        det="--no-detector-score" not in flags,
    )
    np.testing.assert_allclose(np.load(tmp_path / "scores.npy"), ref["scores"], atol=1e-5)
    assert report["tar_at_far"] == pytest.approx(ref["tar"])
    assert any(0.0 < v < 1.0 for v in report["tar_at_far"].values())  # not all 0 or 1
    assert report["auc"] == pytest.approx(ref["auc"])
    ref_1n = reference_1n(ijb_root, ref["templates"])
    for g in ("G1", "G2"):
        got = report["identification_1n"]["galleries"][g]
        assert got["tpir_at_fpir"] == pytest.approx(ref_1n[g]["tpir_at_fpir"])


# ---------------------------------------------------------------------- bad input


def _copy(root: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "IJBC"
    shutil.copytree(root, dst)
    return dst


def _run_bad(root: Path, backbone: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> str:
    argv = ["--backbone", str(backbone), "--image-path", str(root), "--out", str(tmp_path / "o")]
    assert ijb_main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_missing_meta_file_is_named(ijb_root, backbone, tmp_path, capsys) -> None:
    root = _copy(ijb_root, tmp_path)
    (root / "meta/ijbc_name_5pts_score.txt").unlink()
    msg = _run_bad(root, backbone, tmp_path, capsys)
    assert "meta/ijbc_name_5pts_score.txt does not exist" in msg


def test_row_count_mismatch_names_file_and_line(ijb_root, backbone, tmp_path, capsys) -> None:
    root = _copy(ijb_root, tmp_path)
    tid = root / "meta/ijbc_face_tid_mid.txt"
    lines = tid.read_text().splitlines()
    tid.write_text("\n".join(lines[:-1]) + "\n")
    msg = _run_bad(root, backbone, tmp_path, capsys)
    assert f"ijbc_name_5pts_score.txt:{len(lines)}: row-count mismatch" in msg


def test_template_without_images_names_the_pair_line(ijb_root, backbone, tmp_path, capsys) -> None:
    root = _copy(ijb_root, tmp_path)
    pairs = root / "meta/ijbc_template_pair_label.txt"
    lines = pairs.read_text().splitlines()
    lines[2] = f"999999 {lines[2].split()[1]} 0"
    pairs.write_text("\n".join(lines) + "\n")
    msg = _run_bad(root, backbone, tmp_path, capsys)
    assert "ijbc_template_pair_label.txt:3: template 999999 has no images" in msg


def test_unreadable_image_names_file_and_row(ijb_root, backbone, tmp_path, capsys) -> None:
    root = _copy(ijb_root, tmp_path)
    pts = _read(root / "meta/ijbc_name_5pts_score.txt")
    victim = root / "loose_crop" / pts[4][0]
    victim.write_bytes(victim.read_bytes()[:40])  # a truncated JPEG
    msg = _run_bad(root, backbone, tmp_path, capsys)
    assert f"{victim} (" in msg and "ijbc_name_5pts_score.txt:5)" in msg and "unreadable" in msg


def test_evaluate_compares_two_ijb_outputs_on_one_figure(ijb_out: Path, tmp_path: Path) -> None:
    from dist_face.cli.evaluate import main as evaluate_main

    other = tmp_path / "other_run"
    other.mkdir()
    for f in ("scores.npy", "labels.npy"):
        shutil.copy(ijb_out / f, other / f)
    argv = ["--compare", str(ijb_out), str(other), "--plot-dir", str(tmp_path / "cmp")]
    assert evaluate_main(argv) == 0
    assert (tmp_path / "cmp" / "roc.png").stat().st_size > 0
    assert evaluate_main(["--compare", str(tmp_path), "--plot-dir", str(tmp_path / "x")]) == 2


def test_nearest_reading_equals_eval_ijbc_with_scikit_learn(ijb_root: Path, tmp_path: Path) -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    from dist_face.eval.ijb import IJB_FARS, tar_at_far_nearest

    rng = np.random.default_rng(4)
    for trial in range(20):
        n = int(rng.integers(50, 3000))
        labels = rng.random(n) < 0.2
        # coarse scores make ties and collinear runs, where the corner dropping matters
        scores = np.round(rng.normal(labels * 1.5, 1.0), int(rng.integers(1, 4)))
        fpr, tpr, _ = metrics.roc_curve(labels, scores)
        fpr, tpr = np.flipud(fpr), np.flipud(tpr)
        want = {}
        for far in IJB_FARS:  # eval_ijbc.py's reading
            _, k = min(zip(abs(fpr - far), range(len(fpr))))
            want[far] = tpr[k]
        assert tar_at_far_nearest(labels, scores) == pytest.approx(want), trial
