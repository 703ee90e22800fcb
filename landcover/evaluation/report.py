"""The report of ``landcover evaluate``: the report folder, Markdown, plots and the per-tile IoU layer.

Scores come from :mod:`landcover.evaluation.evaluate`; this module only presents them.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from landcover.errors import ConfigError, OutputExistsError
from landcover.evaluation.confusion import Confusion
from landcover.io.grid import Grid
from landcover.io.outputs import atomic_folder
from landcover.nomenclature import Nomenclature


@contextlib.contextmanager
def report_dir(out_dir: Path, overwrite: bool) -> Iterator[Path]:
    """A temporary folder renamed to ``out_dir`` when the block completes (nothing half-written)."""
    check_report_dir(out_dir, overwrite)
    with atomic_folder(out_dir, replace=True) as tmp:
        yield tmp
        check_report_dir(out_dir, overwrite)  # still replaceable (nothing else wrote there meanwhile)


def check_report_dir(out_dir: Path, overwrite: bool, inputs: tuple[Path, ...] = ()) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputExistsError(f"{out_dir} is a file; choose a folder for --out")
    for path in inputs:
        if out_dir.resolve() in path.resolve().parents:
            raise ConfigError(f"{path} is inside the report folder {out_dir}; choose another --out")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise OutputExistsError(
                f"{out_dir} exists and is not empty; pass --overwrite to replace it or choose another --out"
            )
        if not (out_dir / "metrics.json").is_file():
            raise OutputExistsError(
                f"{out_dir} holds files but no metrics.json (not a landcover report); refusing to replace "
                "it even with --overwrite: choose another --out"
            )


def _label(nom: Nomenclature, i, width: int = 32) -> str:
    text = f"{nom.codes[i]} {nom.class_names[i]}"
    return text if len(text) <= width else text[: width - 1] + "…"


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "–" if value is None else format(value, spec)


def _figure(width: float, height: float):
    """A matplotlib figure on the Agg canvas (no pyplot: no global state, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def plot_confusion(cm: np.ndarray, nom: Nomenclature, out: Path) -> None:
    keep = np.flatnonzero((cm.sum(0) + cm.sum(1)) > 0)
    sub = cm[np.ix_(keep, keep)]
    norm = sub / np.maximum(sub.sum(1, keepdims=True), 1)
    size = min(4 + 0.45 * max(len(keep), 1), 24)
    fig, ax = _figure(size + 2, size)
    image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the reference class (row)")
    names = [f"{_label(nom, i)} (n={sub[j].sum():,})" for j, i in enumerate(keep)]
    ax.set_xticks(range(len(keep)), [_label(nom, i) for i in keep], rotation=90, fontsize=7)
    ax.set_yticks(range(len(keep)), names, fontsize=7)
    ax.set(xlabel="prediction", ylabel="reference (CORINE)", title="Confusion matrix (row-normalised; cell: count)")
    if len(keep) <= 25:
        for r, c in zip(*np.nonzero(sub), strict=True):
            ax.text(
                c,
                r,
                f"{sub[r, c]:,}",
                ha="center",
                va="center",
                fontsize=6,
                color="white" if norm[r, c] > 0.5 else "black",
            )
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def plot_iou(scores: dict, nom: Nomenclature, out: Path) -> None:
    rows = [c for c in scores["per_class"] if c["iou"] is not None]
    fig, ax = _figure(8, 1.5 + 0.3 * max(len(rows), 1))
    ax.barh(
        range(len(rows)),
        [c["iou"] for c in rows],
        color=[tuple(v / 255 for v in nom.colors[c["id"]]) for c in rows],
        edgecolor="black",
        linewidth=0.5,
    )
    ax.set_yticks(range(len(rows)), [_label(nom, c["id"], 40) for c in rows], fontsize=7)
    ax.invert_yaxis()
    if scores["miou"] is not None:
        ax.axvline(scores["miou"], color="tab:red", linestyle="--", label=f"mIoU {scores['miou']:.3f}")
        ax.legend(loc="lower right")
    ax.set(xlim=(0, 1), xlabel="IoU", title="IoU per class")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def write_tiles(conf: Confusion, grid: Grid, nom: Nomenclature, out: Path) -> int:
    """``tiles`` layer: one polygon per tile with its mIoU, accuracy, dominant class and IoU per class."""
    import geopandas as gpd
    from shapely.geometry import Polygon

    t, tiles = conf.tile_size or 0, conf.tiles or {}
    ntc, ntr = -(-grid.width // t), -(-grid.height // t)
    geoms = []
    for r in range(ntr):
        for c in range(ntc):
            x0, y0, x1, y1 = c * t, r * t, min((c + 1) * t, grid.width), min((r + 1) * t, grid.height)
            geoms.append(Polygon([grid.transform * xy for xy in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))]))
    names = np.array([*nom.class_names, ""], dtype=object)
    codes = np.array([*nom.codes, ""], dtype=object)
    data = {
        "tile_row": np.repeat(np.arange(ntr), ntc),
        "tile_col": np.tile(np.arange(ntc), ntr),
        "evaluated_pixels": tiles["evaluated_pixels"],
        "labelled_pixels": tiles["labelled_pixels"],
        "miou": tiles["miou"],
        "accuracy": tiles["accuracy"],
        "dominant_code": codes[tiles["dominant_id"]],
        "dominant_class": names[tiles["dominant_id"]],
        "dominant_share": tiles["dominant_share"],
        "dominant_iou": tiles["dominant_iou"],
        "predicted_class": names[tiles["predicted_id"]],
    }
    for i in np.flatnonzero((conf.matrix.sum(0) + conf.matrix.sum(1)) > 0):
        data["iou_" + re.sub(r"\W", "_", nom.codes[i])] = tiles["iou"][:, i].astype(np.float64)
    frame = gpd.GeoDataFrame(data, geometry=geoms, crs=grid.crs.to_wkt())
    frame.to_file(out, layer="tiles", driver="GPKG", engine="pyogrio")
    return len(frame)


def write_markdown(metrics: dict, out: Path) -> None:
    s, p = metrics["scores"], metrics["pixels"]
    area = "" if s["area_evaluated_ha"] is None else f" ({s['area_evaluated_ha']:,.1f} ha)"
    lines = [
        "# Land-cover map evaluation",
        "",
        f"- prediction: `{metrics['inputs']['prediction']}`",
        f"- labels (reference): `{metrics['inputs']['labels']}` — {metrics['inputs']['labels_description']}",
        f"- nomenclature: {metrics['nomenclature']['name']} ({len(metrics['nomenclature']['classes'])} classes); "
        f"landcover {metrics['software']['landcover']}, {metrics['created']}",
        "",
        "## Summary",
        "",
        "| metric | value |",
        "|---|---|",
        f"| mIoU over classes in either map ({s['classes_present']} classes) | {_ci(s, 'miou')} |",
        f"| mIoU over classes in the reference ({s['classes_in_reference']} classes) | {_ci(s, 'miou_reference')} |",
        f"| frequency-weighted IoU | {_fmt(s['fwiou'])} |",
        f"| overall accuracy | {_ci(s, 'overall_accuracy')} |",
        f"| Cohen's kappa | {_fmt(s['kappa'])} |",
        f"| macro F1 / precision / recall | {_fmt(s['macro_f1'])} / {_fmt(s['macro_precision'])} / "
        f"{_fmt(s['macro_recall'])} |",
        f"| pixels evaluated | {p['evaluated']:,} of {p['total']:,}{area} |",
        "",
        "## Per class",
        "",
        "| id | code | class | IoU (95 % CI) | precision | recall | F1 | reference ha | predicted ha | reference px "
        "| predicted px |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    class_ci = {c["id"]: c for c in s.get("intervals", {}).get("per_class_iou", [])}
    for c in s["per_class"]:
        if c["reference_pixels"] or c["predicted_pixels"]:
            iou = _fmt(c["iou"]) + (_bounds(class_ci[c["id"]]) if c["id"] in class_ci else "")
            lines.append(
                f"| {c['id']} | {c['code']} | {c['name']} | {iou} | {_fmt(c['precision'])} | "
                f"{_fmt(c['recall'])} | {_fmt(c['f1'])} | {_fmt(c['reference_area_ha'], ',.1f')} | "
                f"{_fmt(c['predicted_area_ha'], ',.1f')} | {c['reference_pixels']:,} | {c['predicted_pixels']:,} |"
            )
    absent = [c["name"] for c in s["per_class"] if not (c["reference_pixels"] or c["predicted_pixels"])]
    only_pred = [c["name"] for c in s["per_class"] if c["predicted_pixels"] and not c["reference_pixels"]]
    lines += [
        "",
        "## Notes",
        "",
        "- Scores are computed on the stitched map, each pixel once; rows of the confusion matrix are the "
        "reference, columns the prediction.",
        f"- Ignored: {p['no_prediction']:,} pixels without a prediction (255), {p['no_label']:,} without a "
        f"label (255: outside the labels, CLC no-data/unclassified, or classes the nomenclature drops); "
        f"{p['neither']:,} of them lack both.",
        "- mIoU and the macro means average the classes present in the reference or the prediction; an "
        "undefined precision/recall (–) counts as 0 in the macro means. The mIoU over classes in the reference "
        "leaves out classes only the prediction has.",
        *_interval_notes(s),
    ]
    if only_pred:
        lines.append(f"- Predicted but absent from the reference (IoU 0): {', '.join(only_pred)}.")
    if absent:
        lines.append(f"- Classes absent from both maps (not scored): {len(absent)}.")
    if s["area_evaluated_ha"] is None:
        lines.append("- Areas are not given: the grid's CRS is geographic (pixel size not in metres).")
    lines += _comparison(s.get("comparison"))
    lines += [
        "",
        "![confusion matrix](confusion_matrix.png)",
        "",
        "![IoU per class](iou_per_class.png)",
        "",
        f"Spatial errors: `tiles_iou.gpkg`, layer `tiles` ({metrics['tiles']['count']} tiles of "
        f"{metrics['tiles']['tile_size']} px; open in QGIS and style by `miou`).",
        "",
    ]
    out.write_text("\n".join(lines), encoding="utf-8")


def _bounds(iv: dict) -> str:
    return "" if iv.get("low") is None else f" ({iv['low']:.3f}–{iv['high']:.3f})"


def _ci(scores: dict, key: str) -> str:
    """A score with its bootstrap interval, e.g. ``0.512 (0.470–0.553)``."""
    return _fmt(scores[key]) + _bounds(scores.get("intervals", {}).get(key, {}))


def _interval_notes(s: dict) -> list[str]:
    iv = s.get("intervals")
    if not iv:
        return []
    lines = [
        f"- Intervals (in parentheses): {iv['level']:.0%} percentile intervals of a spatial block bootstrap, "
        f"{iv['replicates']} replicates (seed {iv['seed']}), resampling {iv['n_blocks']} blocks of "
        f"{iv['block_size']} px that hold the {iv['n_units']} tiles of {iv['tile_size']} px with evaluated "
        "pixels (whole blocks, never pixels: neighbouring pixels are not independent)."
    ]
    if iv.get("note"):
        lines.append(f"- Caution: {iv['note']}.")
    return lines


def _comparison(cmp: dict | None) -> list[str]:
    """The paired bootstrap of ``--compare``: this map (b) minus the other (a) on the same tiles."""
    if not cmp:
        return []
    lines = [
        "",
        "## Comparison",
        "",
        f"`{cmp['b']}` (this map) minus `{cmp['a']}` on the same reference pixels and tiles (paired block "
        f"bootstrap, same draws for both, {cmp['n_blocks']} blocks):",
        "",
        f"| metric | {cmp['a']} | difference (95 % CI) | share of replicates where this map is better |",
        "|---|---|---|---|",
    ]
    names = {"miou": "mIoU (either map)", "miou_reference": "mIoU (reference classes)", "overall_accuracy": "OA"}
    for key, name in names.items():
        d = cmp[key]
        lines.append(
            f"| {name} | {_fmt(cmp['a_scores'][key])} | {_fmt(d['estimate'], '+.3f')}{_bounds(d)} | "
            f"{_fmt(d.get('share_b_better'), '.1%')} |"
        )
    if cmp.get("note"):
        lines.append(f"\nCaution: {cmp['note']}.")
    return lines
