"""The HTML report: self-contained, has the metrics table, images, curves; renders in Chromium."""

from __future__ import annotations

import io
import shutil
import subprocess

import pytest

from selma_ray.evaluation.report import _plot_pil, build_report, plot_curves
from selma_ray.evaluation.views import UP_COLOR
from selma_ray.storage import RunDir

VARIANTS = ("base", "expert-coco", "merged")
ITEMS = {
    "vrd_1": ("a cat on a table", "dsg1k", "relation"),
    "coco-00001": ("a red cat coco", "skills", "coco"),
}


def _png(color) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def rd(tmp_path) -> RunDir:
    rd = RunDir(str(tmp_path / "run"))
    colors = {"base": (200, 0, 0), "expert-coco": (0, 200, 0), "merged": (0, 0, 200)}
    variants = {}
    for k, v in enumerate(VARIANTS):
        for item in ITEMS:
            rd.write_bytes(_png(colors[v]), "eval", "images", v, f"{item}.png")
        variants[v] = {
            "dsg": {
                "dsg1k": {
                    "overall": 40.0 + k,
                    "by_category": {"relation": 40.0 + k},
                    "n_items": 1,
                    "n_missing": 0,
                    "items": {"vrd_1": 40.0 + k},
                },
                "skills": {
                    "overall": 50.0 + 5 * k,
                    "by_category": {"coco": 50.0 + 5 * k},
                    "n_items": 1,
                    "n_missing": 0,
                    "items": {"coco-00001": 50.0 + 5 * k},
                },
            },
            "tifa": None,
            "clip": 0.5 + 0.1 * k,
            "clip_items": {"vrd_1": 0.4 + 0.1 * k, "coco-00001": 0.6 + 0.1 * k},
            "preference": {
                "pickscore": {
                    "mean": 21.0 + k,
                    "items": {"vrd_1": 20.0 + k, "coco-00001": 22.0 + 3 * k},
                }
            },  # fmt: skip
        }
    rd.write_json(
        {
            "variants": variants,
            "benchmarks": {"dsg1k": ["vrd_1"], "skills": ["coco-00001"]},
            "items": {
                i: {"text": t, "benchmark": b, "category": c} for i, (t, b, c) in ITEMS.items()
            },
            "vqa_model": "tiny:vqa",
            "clip_model": "tiny:clip",
            "rules": "reference",
            "notes": ["skills: 1 held-out prompt(s) (not trained on)"],
        },
        "eval",
        "report.json",
    )
    curve = [[s, 1.0 / s] for s in range(1, 11)]
    rd.write_json({"train_loss": curve, "val_loss": curve[4::5]}, "experts", "coco", "expert.json")
    return rd


def test_report_is_self_contained_with_table_images_and_curves(rd):
    paths = build_report(rd)
    page = rd.read_text("eval", "report.html")
    assert paths["html"].endswith("eval/report.html")
    assert 'src="http' not in page and 'src="file' not in page  # everything inlined
    n_images = page.count("data:image/png;base64,")
    # 2 items x 3 variants + 1 loss plot + contact sheet
    assert n_images == 2 * len(VARIANTS) + 2
    assert "merged &minus; base" in page and "+2.00" in page and "+10.00" in page
    assert "a red cat coco" in page and "DSG dsg1k: relation" in page
    # preference scores and CLIPScore per benchmark: merged - base is +2 on dsg1k, +6 on skills
    for metric, cells in (
        ("PickScore dsg1k", "<td>20.00</td><td>21.00</td><td>22.00</td><td>+2.00</td>"),
        ("PickScore skills", "<td>22.00</td><td>25.00</td><td>28.00</td><td>+6.00</td>"),
        ("CLIPScore dsg1k", "<td>0.40</td><td>0.50</td><td>0.60</td><td>+0.20</td>"),
    ):
        assert f"<th>{metric}</th>{cells}" in page.replace(' class="up"', ""), metric
    # the per-skill merged - base chart, the skill matrix and, for tiny models, the caveat
    assert '<svg id="merged-minus-base"' in page and ">coco</text>" in page
    assert '<table class="matrix" id="skill-matrix">' in page
    assert '<td class="own">55.0 (n=1)</td>' in page  # expert-coco on coco
    assert 'id="random-models"' in page and "DSG and TIFA near 0" in page
    from PIL import Image

    with Image.open(io.BytesIO(rd.read_bytes("eval", "contact_sheet.png"))) as im:
        assert im.size[0] > 3 * 96


def test_plots_png_with_and_without_matplotlib():
    curves = {"train_loss": [[1, 1.0], [2, 0.5]], "val_loss": [[2, 0.7]]}
    for data in (plot_curves("x", curves), _plot_pil("x", curves)):
        assert data.startswith(b"\x89PNG")


def _chromium() -> str | None:
    return next(
        (b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None
    )


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="no chromium binary")
def test_report_renders_in_headless_chromium(rd, tmp_path):
    import numpy as np
    from PIL import Image

    build_report(rd)
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--screenshot={shot}",
            "--window-size=1200,2000",
            f"file://{rd.path('eval', 'report.html')}",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    with Image.open(shot) as im:
        px = np.asarray(im.convert("RGB"))
    assert px.shape[:2] == (2000, 1200)
    assert px.std() > 10  # not blank
    # the merged - base chart rendered: its green bar (coco: +10)
    up = np.array([int(UP_COLOR[i : i + 2], 16) for i in (1, 3, 5)])
    assert (np.abs(px.astype(int) - up).max(axis=-1) < 8).sum() > 300
    # the skill matrix's outlined cell (expert-coco on coco): its blue outline
    own = np.array([0x2B, 0x83, 0xBA])
    assert (np.abs(px.astype(int) - own).max(axis=-1) < 8).sum() > 50
    # the inlined images rendered: pure red/green/blue thumbnails are on the page
    for channel in range(3):
        others = [c for c in range(3) if c != channel]
        mask = (px[..., channel] > 180) & (px[..., others[0]] < 40) & (px[..., others[1]] < 40)
        assert mask.sum() > 500
