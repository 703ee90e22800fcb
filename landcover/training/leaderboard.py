"""The leaderboard of a sweep: rank its finished variants, promote the best, score it on test once.

:func:`leaderboard` ranks the finished variants of a sweep folder (see :mod:`landcover.training.sweep`)
by the same validation metric (the task's monitor: val mIoU or val mAP) in ``leaderboard.csv``/``.md``
and a plot; the best is copied to ``OUT/best`` (checkpoint + config) and scored once on the test
split (``best/test_metrics.json``), only then.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import yaml

from landcover.config import apply_override
from landcover.errors import ConfigError
from landcover.io.outputs import atomic_folder, atomic_output, write_text_atomic


def leaderboard(
    out: str | Path, *, keep: int | None = None, dataset: str | Path | None = None, test: bool = True
) -> dict[str, Any]:
    """Rank the finished variants of ``out``; promote the best to ``out/best``; score it on test once."""
    import pandas as pd

    out = Path(out)
    if not (out / "sweep.json").is_file():
        raise ConfigError(
            f"{out} holds no sweep (no sweep.json); run `landcover sweep SWEEP --out {out}` first, "
            "or pass the --out of that run"
        )
    plan = json.loads((out / "sweep.json").read_text())
    rows, missing = [], []
    for name, config in plan["variants"].items():
        path = out / "variants" / name / "metrics.json"
        if not path.exists():
            missing.append(name)
            continue
        m = json.loads(path.read_text())
        monitor = m["monitor"]
        row = {
            "variant": name,
            "metric": monitor,
            "score": m.get(monitor),
            "best_epoch": m.get("best_epoch"),
            "stopped_epoch": m.get("stopped_epoch"),
            "parameters": m.get("parameters"),
            "train_seconds": m.get("train_seconds"),
            "samples_per_second": m.get("train_samples_per_second"),
            **_model_columns(config),
        }
        row.update({k: v for k, v in m.items() if k.startswith(("val/iou/", "val/ap/", "val/f1"))})
        rows.append(row)
    if missing:
        raise ConfigError(
            f"{len(missing)} variant(s) not finished ({', '.join(missing[:5])}): run the sweep "
            "(or the rest of its array) first"
        )
    table = pd.DataFrame(rows)
    table["score"] = table["score"].astype(float).fillna(-math.inf)
    table = table.sort_values(["score", "variant"], ascending=[False, True]).reset_index(drop=True)
    table.insert(0, "rank", range(1, len(table) + 1))
    table = table.join(pd.DataFrame([_versus_best(out, table["variant"][0], name) for name in table["variant"]]))
    write_text_atomic(out / "leaderboard.csv", table.to_csv(index=False))
    cols = [
        "rank",
        "variant",
        "score",
        "vs_best",
        "lr",
        "encoder",
        "best_epoch",
        "parameters",
        "train_seconds",
        "samples_per_second",
    ]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for r in table.to_dict("records")]
    lines += ["", VS_BEST_NOTE]
    markdown = f"# Sweep leaderboard ({table['metric'][0]}, validation split)\n\n" + "\n".join(lines) + "\n"
    write_text_atomic(out / "leaderboard.md", markdown)
    _plot(table, out / "leaderboard.png")
    best = table["variant"][0]
    _promote(out, best)
    if keep is not None:
        for name in table["variant"][keep:]:
            shutil.rmtree(out / "variants" / name / "checkpoints", ignore_errors=True)
    result: dict[str, Any] = {"best": best, "leaderboard": table.to_dict("records")}
    if test:
        result["test"] = _test_once(out / "best", dataset)
        write_text_atomic(out / "leaderboard.md", markdown + best_test_line(best, result["test"]))
    write_text_atomic(out / "leaderboard.json", json.dumps(result, indent=2, default=str) + "\n")
    return result


VS_BEST_NOTE = (
    "`vs_best`: the variant's val mIoU minus the best's with a 95 % paired block-bootstrap interval over the "
    "val tiles (`val_counts.npz`); `≈` = the interval holds 0: cannot be told apart from the best. "
    "`–`: no per-tile counts (classification, or a run of an older version)."
)


def _versus_best(out: Path, best: str, name: str) -> dict[str, Any]:
    """Paired bootstrap of ``name`` minus ``best`` on the val tiles: the difference, its interval and
    whether the variant can be told apart from the best (None without saved counts)."""
    from landcover.evaluation.bootstrap import compare_runs

    row: dict[str, Any] = {"vs_best": "–", "delta_miou": None, "delta_low": None, "delta_high": None, "tied": None}
    a, b = out / "variants" / best, out / "variants" / name
    if not ((a / "val_counts.npz").is_file() and (b / "val_counts.npz").is_file()):
        return row
    if name == best:
        return row | {"vs_best": "best", "tied": True}
    d = compare_runs(a, b, split="val").miou
    if d.estimate is None or d.low is None or d.high is None:
        return row
    tied = d.low <= 0 <= d.high
    text = f"{d.estimate:+.3f} ({d.low:+.3f} to {d.high:+.3f})" + (" ≈" if tied else "")
    return {"vs_best": text, "delta_miou": d.estimate, "delta_low": d.low, "delta_high": d.high, "tied": tied}


def best_test_line(best: str, test: dict[str, Any]) -> str:
    """The best variant's test scores with their block-bootstrap intervals (segmentation)."""
    iv = test.get("test/intervals") or {}
    if not iv:
        return ""
    parts = [
        f"{name} {iv[key]['estimate']:.3f} ({iv[key]['low']:.3f}–{iv[key]['high']:.3f})"
        for key, name in (
            ("miou", "mIoU"),
            ("miou_reference", "mIoU over reference classes"),
            ("overall_accuracy", "OA"),
        )
        if iv.get(key, {}).get("low") is not None
    ]
    note = f" Caution: {iv['note']}." if iv.get("note") else ""
    return (
        f"\nBest variant `{best}` on the test split: {', '.join(parts)} (95 % block-bootstrap intervals, "
        f"{iv['n_blocks']} blocks of {iv['n_units']} tiles).{note}\n"
    )


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.4g}"  # e.g. no learning rate: the LightGBM baseline
    return str(value)


def _plot(table, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    if table["lr"].nunique() > 1:
        for encoder, group in table.groupby("encoder"):
            group = group.sort_values("lr")
            ax.plot(group["lr"], group["score"].replace(-math.inf, float("nan")), "o-", label=encoder)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.legend()
    else:
        ax.barh(table["variant"][::-1], table["score"][::-1])
    ax.set_ylabel(table["metric"][0]) if table["lr"].nunique() > 1 else ax.set_xlabel(table["metric"][0])
    ax.set_title("sweep: validation score per variant")
    fig.tight_layout()
    with atomic_output(path, overwrite=True) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def _promote(out: Path, best: str) -> None:
    """Copy the best variant's checkpoint, config and metrics to ``out/best`` (atomically)."""
    src = out / "variants" / best
    target = out / "best"
    if target.exists() and json.loads((target / "variant.json").read_text())["variant"] == best:
        return
    with atomic_folder(target, replace=True) as tmp:  # the old pick or the new one, never a mix
        shutil.copy2(src / "checkpoints" / "best.ckpt", tmp / "best.ckpt")
        for name in ("variant.yaml", "metrics.json", "dataset.json"):
            if (src / name).exists():
                shutil.copy2(src / name, tmp / name)
        (tmp / "variant.json").write_text(json.dumps({"variant": best}) + "\n")


def _model_columns(config: dict[str, Any]) -> dict[str, Any]:
    """What a variant trains: learning rate and encoder of a CNN, or the per-pixel baseline."""
    if config["model"].get("arch", "cnn") == "lightgbm":
        return {"lr": None, "encoder": "lightgbm (per pixel)", "encoder_weights": "-"}
    return {
        "lr": config["optim"]["lr"],
        "encoder": config["model"]["encoder"],
        "encoder_weights": config["model"]["encoder_weights"],
    }


def _test_once(best: Path, dataset: str | Path | None) -> dict[str, Any]:
    """The final pick's test-split scores: computed the first time, read back afterwards."""
    done = best / "test_metrics.json"
    if done.exists():
        return json.loads(done.read_text())
    from landcover.training.datamodule import LandcoverDataModule
    from landcover.training.scoring import evaluate_checkpoint
    from landcover.training.train import TrainConfig

    config = yaml.safe_load((best / "variant.yaml").read_text())
    if dataset is not None:
        apply_override(config, f"data.dataset={dataset}")
    cfg = TrainConfig.model_validate(config)
    data = LandcoverDataModule(cfg.data, task=cfg.model.task, seed=cfg.trainer.seed)
    scores = evaluate_checkpoint(best / "best.ckpt", data, split="test", counts_path=best / "test_counts.npz")
    write_text_atomic(done, json.dumps(scores, indent=2, default=str) + "\n")
    return scores


def sweep_summary(result: dict[str, Any], out: str | Path) -> str:
    """One line for the CLI: the pick, its validation and test scores, where the leaderboard is."""
    out = Path(out)
    top = result["leaderboard"][0]
    test = {k: v for k, v in result.get("test", {}).items() if isinstance(v, float) and "/iou/" not in k}
    miou = (result.get("test", {}).get("test/intervals") or {}).get("miou", {})
    ci = f" (test mIoU 95 % CI {miou['low']:.3f}-{miou['high']:.3f})" if miou.get("low") is not None else ""
    return (
        f"best of {len(result['leaderboard'])}: {result['best']} ({top['metric']} {top['score']:.3f}); "
        f"test: {', '.join(f'{k} {v:.3f}' for k, v in sorted(test.items()))}{ci}; "
        f"leaderboard {out / 'leaderboard.md'}; best checkpoint {out / 'best' / 'best.ckpt'}"
    )
