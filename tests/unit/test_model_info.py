"""tools/model_info.py: parameters and FLOPs against InsightFace's published complexity."""

from __future__ import annotations

import pytest

from dist_face.cli import model_info


def test_iresnet50_flops_match_insightface() -> None:
    # arcface_torch's flops.py reports 6.3 GMACs for r50, i.e. 12.6 GFLOPs at 2 FLOPs per MAC.
    params, flops = model_info.describe("iresnet50", 512)
    assert params == 43_590_848
    assert flops == pytest.approx(12.6e9, rel=0.01)


def test_main_prints_a_row_per_backbone(capsys: pytest.CaptureFixture[str]) -> None:
    assert model_info.main(["tiny", "mbf"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2].startswith("| tiny | 1,864,448 | 1.86 | 0.16")
    assert out[3].startswith("| mbf | 2,059,520 | 2.06 | 0.87")
    with pytest.raises(SystemExit):
        model_info.main(["resnet9"])
    assert "unknown backbone(s) resnet9" in capsys.readouterr().err
