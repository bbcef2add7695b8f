"""Stage-5 report: ``eval/report.html`` (self-contained) and ``eval/contact_sheet.png``.

:func:`build_report` reads ``eval/report.json`` (written by the eval stage), the images under
``eval/images/<variant>/`` and each expert's ``experts/<skill>/expert.json`` loss curves, and
writes one HTML file with everything inlined as ``data:`` URIs: the paper's comparison table
(:mod:`selma_ray.evaluation.table`, also written as ``eval/table.md`` / ``.csv``), a metrics
table per variant and
category (with merged - base), the per-skill merged - base chart and the skill matrix with
bootstrap intervals (:mod:`selma_ray.evaluation.views`), the human side-by-side win rates
when the run has votes (:mod:`selma_ray.evaluation.votes`), an image grid per skill/benchmark
category x variant with the prompts, and the training / validation loss curves (matplotlib
when installed, else PIL). A run on tiny random models says so at the top.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping
from typing import Any

from selma_ray import layout
from selma_ray.evaluation.table import (
    PREFERENCE_COLUMNS,
    matrix_markdown,
    paper_table,
    to_csv,
    to_markdown,
)
from selma_ray.evaluation.table import to_html as table_html
from selma_ray.evaluation.views import (
    delta_chart_svg,
    merged_minus_base,
    skill_matrix,
    skill_matrix_html,
)
from selma_ray.evaluation.votes import human_ratings_html
from selma_ray.storage import RunDir

THUMB = 96
PER_GROUP = 4  # images per category row in the grid


def _data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _fmt(v: Any) -> str:
    return "" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)


def _metric_rows(report: dict[str, Any]) -> tuple[list[str], dict[str, dict[str, float | None]]]:
    """(metric names, {variant: {metric: value}}): every DSG overall/category, TIFA, the
    preference scores, CLIP."""
    metrics: dict[str, None] = {}
    table: dict[str, dict[str, float | None]] = {}
    for v, entry in report["variants"].items():
        row: dict[str, float | None] = {}
        for bench, r in (entry.get("dsg") or {}).items():
            row[f"DSG {bench}"] = r["overall"]
            if r.get("question_mean") is not None:  # the SELMA paper's mean over questions
                row[f"DSG {bench} (question mean)"] = r["question_mean"]
            for cat, val in r["by_category"].items():
                row[f"DSG {bench}: {cat}"] = val
        if entry.get("tifa"):
            row["TIFA"] = entry["tifa"]["overall"]
            for cat, val in entry["tifa"]["by_category"].items():
                row[f"TIFA: {cat}"] = val
        # preference scores and CLIPScore per benchmark, as in the paper table (a report
        # without per-item scores has only the mean over every image)
        means = {
            title: entry["preference"][kind]
            for kind, title in PREFERENCE_COLUMNS.items()
            if kind in (entry.get("preference") or {})
        }
        means["CLIPScore"] = {"mean": entry.get("clip"), "items": entry.get("clip_items")}
        for title, scored in means.items():
            scores = scored.get("items") or {}
            if not scores:
                if scored.get("mean") is not None:
                    row[title] = scored["mean"]
                continue
            for bench, ids in report.get("benchmarks", {}).items():
                got = [scores[i] for i in ids if scores.get(i) is not None]
                if got:
                    row[f"{title} {bench}"] = sum(got) / len(got)
        metrics.update(dict.fromkeys(row))
        table[v] = row
    return list(metrics), table


def metrics_table_html(report: dict[str, Any]) -> str:
    metrics, table = _metric_rows(report)
    variants = list(table)
    delta = "base" in table and "merged" in table
    head = "".join(f"<th>{_esc(v)}</th>" for v in variants)
    head += "<th>merged &minus; base</th>" if delta else ""
    body = []
    for m in metrics:
        cells = "".join(f"<td>{_fmt(table[v].get(m))}</td>" for v in variants)
        if delta:
            a, b = table["merged"].get(m), table["base"].get(m)
            d = None if a is None or b is None else a - b
            cls = "" if d is None else ' class="up"' if d > 0 else ' class="down"' if d < 0 else ""
            cells += f"<td{cls}>{'' if d is None else f'{d:+.2f}'}</td>"
        body.append(f"<tr><th>{_esc(m)}</th>{cells}</tr>")
    return (
        f'<table class="metrics"><thead><tr><th>metric</th>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _groups(report: dict[str, Any]) -> dict[str, list[str]]:
    """{"<benchmark>: <category>": [item ids]} in report order, PER_GROUP each at most."""
    out: dict[str, list[str]] = {}
    for item_id, info in report.get("items", {}).items():
        key = f"{info['benchmark']}: {info['category']}"
        ids = out.setdefault(key, [])
        if len(ids) < PER_GROUP:
            ids.append(item_id)
    return out


def _image(rd: RunDir, variant: str, item_id: str) -> bytes | None:
    name = f"{item_id}.png"
    return (
        rd.read_bytes(*layout.eval_images(variant, name))
        if rd.exists(*layout.eval_images(variant, name))
        else None
    )


def grid_html(rd: RunDir, report: dict[str, Any]) -> str:
    variants = list(report["variants"])
    parts = []
    for group, ids in _groups(report).items():
        head = "".join(f"<th>{_esc(v)}</th>" for v in variants)
        rows = []
        for item_id in ids:
            info = report["items"][item_id]
            cells = []
            for v in variants:
                data = _image(rd, v, item_id)
                dsg = (report["variants"][v].get("dsg") or {}).get(info["benchmark"], {})
                score = (dsg.get("items") or {}).get(item_id)
                cap = "" if score is None else f"<br><small>DSG {score:.0f}</small>"
                img = (
                    f'<img src="{_data_uri(data)}" alt="{_esc(v)} {_esc(item_id)}" '
                    f'width="{THUMB}" height="{THUMB}">'
                    if data
                    else "<em>missing</em>"
                )
                cells.append(f"<td>{img}{cap}</td>")
            rows.append(
                f'<tr><td class="prompt"><code>{_esc(item_id)}</code><br>{_esc(info["text"])}'
                f"</td>{''.join(cells)}</tr>"
            )
        parts.append(
            f'<h3>{_esc(group)}</h3><table class="grid"><thead><tr><th>prompt</th>{head}</tr>'
            f"</thead><tbody>{''.join(rows)}</tbody></table>"
        )
    return "".join(parts)


def loss_curves(rd: RunDir) -> dict[str, dict[str, list[list[float]]]]:
    """{skill: {"train_loss": [[step, loss]...], "val_loss": [...]}} from expert.json files."""
    out = {}
    for skill in sorted(rd.listdir(*layout.experts_dir())):
        if rd.exists(*layout.expert_meta(skill)):
            meta = rd.read_json(*layout.expert_meta(skill))
            out[skill] = {k: list(meta.get(k) or []) for k in ("train_loss", "val_loss")}
    return out


def plot_curves(skill: str, curves: dict[str, list[list[float]]]) -> bytes:
    """A PNG plot of one expert's train/val loss (matplotlib, else a PIL line drawing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return _plot_pil(skill, curves)
    fig, ax = plt.subplots(figsize=(4, 2.6), dpi=100)
    for key, style in (("train_loss", "-"), ("val_loss", "o--")):
        pts = curves.get(key) or []
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=key.replace("_", " "))
    ax.set_title(f"expert {skill}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _plot_pil(skill: str, curves: dict[str, list[list[float]]]) -> bytes:
    from PIL import Image, ImageDraw

    w, h, m = 400, 260, 30
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    d.text((m, 5), f"expert {skill}: train (blue) / val (red) loss", fill="black")
    d.rectangle([m, m, w - m, h - m], outline="black")
    pts_all = [p for k in ("train_loss", "val_loss") for p in curves.get(k) or []]
    if pts_all:
        xs, ys = [p[0] for p in pts_all], [p[1] for p in pts_all]
        x0, x1, y0, y1 = min(xs), max(xs) or 1, min(ys), max(ys)
        sx = (w - 2 * m) / ((x1 - x0) or 1)
        sy = (h - 2 * m) / ((y1 - y0) or 1)
        for key, color in (("train_loss", "blue"), ("val_loss", "red")):
            line = [(m + (p[0] - x0) * sx, h - m - (p[1] - y0) * sy) for p in curves.get(key) or []]
            if len(line) > 1:
                d.line(line, fill=color, width=2)
            for x, y in line:
                d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=color)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def contact_sheet(rd: RunDir, report: dict[str, Any]) -> bytes:
    """One PNG: a row per item (up to PER_GROUP per category), a column per variant."""
    from PIL import Image, ImageDraw

    variants = list(report["variants"])
    ids = [i for group in _groups(report).values() for i in group]
    label_w, head_h = 160, 20
    sheet = Image.new(
        "RGB", (label_w + THUMB * len(variants), head_h + THUMB * max(len(ids), 1)), "white"
    )
    d = ImageDraw.Draw(sheet)
    for c, v in enumerate(variants):
        d.text((label_w + c * THUMB + 2, 4), v[:16], fill="black")
    for r, item_id in enumerate(ids):
        y = head_h + r * THUMB
        d.text((2, y + 2), item_id[:24], fill="black")
        d.text((2, y + 16), report["items"][item_id]["text"][:24], fill="gray")
        for c, v in enumerate(variants):
            data = _image(rd, v, item_id)
            if data:
                with Image.open(io.BytesIO(data)) as im:
                    sheet.paste(im.convert("RGB").resize((THUMB, THUMB)), (label_w + c * THUMB, y))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()


_CSS = """
body{font-family:sans-serif;margin:20px;color:#222}
table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #ccc;padding:4px 6px;text-align:center;vertical-align:top}
td.prompt{text-align:left;max-width:260px;font-size:12px}
.up{color:#080;font-weight:bold}.down{color:#b00;font-weight:bold}
.curves img{margin:4px;border:1px solid #ddd}
.caveat{background:#fff3cd;border:1px solid #e0c36a;padding:8px;max-width:900px}
table.matrix td.own{outline:3px solid #2b83ba;outline-offset:-3px}
table.matrix td.best{font-weight:bold}
"""


def random_models_caveat(report: dict[str, Any]) -> str | None:
    """What a reader must know when the run's models are tiny random ones (the tiny preset,
    a rehearsal): their scores say the pipeline ran, not how well the method works."""
    refs = [report.get("vqa_model"), report.get("clip_model")]
    if not report.get("rehearsal") and not any(str(r).startswith("tiny:") for r in refs if r):
        return None
    return (
        "This run's models are tiny and randomly initialised (the tiny preset or a "
        "rehearsal): their images are noise and the VQA model answers at random, so DSG and "
        "TIFA near 0 and merged - base near 0 are expected. The numbers show the pipeline "
        "works end to end, not how well SELMA does; run a GPU preset for that."
    )


def read_report(run_dir: str | RunDir) -> dict[str, Any]:
    """A run's ``eval/report.json``; a missing one raises naming it and the fix."""
    rd = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    if not rd.exists(*layout.eval_report()):
        msg = f"no {rd.url(*layout.eval_report())}: run the eval stage first"
        raise FileNotFoundError(msg)
    return rd.read_json(*layout.eval_report())


def build_report(
    run_dir: str | RunDir, compare: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Write ``eval/report.html``, ``eval/contact_sheet.png`` and the paper's comparison
    table (``eval/table.md``, ``eval/table.csv``); returns their URIs. ``compare``: {label:
    run directory} of other runs whose merged model joins the table (e.g. ``ground-truth``)."""
    rd = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    report = read_report(rd)
    table = paper_table(report, {label: read_report(uri) for label, uri in (compare or {}).items()})
    curves = loss_curves(rd)
    plots = "".join(
        f'<img src="{_data_uri(plot_curves(skill, c))}" alt="loss curves {_esc(skill)}">'
        for skill, c in curves.items()
    )
    sheet = contact_sheet(rd, report)
    notes = "".join(f"<li>{_esc(n)}</li>" for n in report.get("notes", []))
    caveat = random_models_caveat(report)
    caveat = f'<p class="caveat" id="random-models">{_esc(caveat)}</p>' if caveat else ""
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>SELMA evaluation</title><style>{_CSS}</style></head>
<body>
<h1>SELMA evaluation</h1>
<p>Run: <code>{_esc(rd.uri)}</code>. VQA: <code>{_esc(report.get("vqa_model"))}</code>,
CLIP: <code>{_esc(report.get("clip_model"))}</code>, DSG rules: {_esc(report.get("rules"))}.</p>
<ul>{notes}</ul>
{caveat}
<h2>The paper's comparison (mean over items, 95 % bootstrap interval)</h2>
<p>DSG and TIFA 0-100, CLIPScore 0-2.5; PickScore, ImageReward and HPS on their own scales.
Differences are paired over the items both models were scored on.</p>
{table_html(table)}
<h2>Metrics (0-100; CLIPScore 0-2.5)</h2>
{metrics_table_html(report)}
<h2>Merged minus base, per skill (DSG on held-out skill prompts, 95 % interval)</h2>
{delta_chart_svg(merged_minus_base(report))}
<h2>Skill matrix: each variant on every skill's held-out prompts (DSG, 95 % interval)</h2>
<p>An expert that specialises scores best on its own skill (outlined); the best variant per
skill is in bold.</p>
{skill_matrix_html(skill_matrix(report))}
{human_ratings_html(rd)}
<h2>Loss curves</h2>
<div class="curves">{plots or "<p>no expert curves</p>"}</div>
<h2>Images</h2>
{grid_html(rd, report)}
<h2>Contact sheet</h2>
<img src="{_data_uri(sheet)}" alt="contact sheet">
</body></html>
"""
    rd.write_bytes(sheet, *layout.eval_contact_sheet())
    rd.write_text(to_markdown(table) + "\n" + matrix_markdown(report), *layout.eval_table("md"))
    rd.write_text(to_csv(table), *layout.eval_table("csv"))
    rd.write_text(page, *layout.eval_report_html())
    return {
        "html": rd.url(*layout.eval_report_html()),
        "contact_sheet": rd.url(*layout.eval_contact_sheet()),
        "table_md": rd.url(*layout.eval_table("md")),
        "table_csv": rd.url(*layout.eval_table("csv")),
    }
