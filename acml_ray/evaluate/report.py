"""Report rendering: PNG plots (matplotlib, Agg backend) and a Markdown summary of report.json."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402


def plot_retrieval_curves(retrieval: dict, ks: list[int], path: str | Path) -> Path:
    """Top-k vs k per direction, one line per pool size, chance dashed."""
    directions = sorted(retrieval)
    fig, axes = plt.subplots(1, max(1, len(directions)), figsize=(5 * max(1, len(directions)), 4), squeeze=False)
    for ax, direction in zip(axes[0], directions):
        for pool_name, block in retrieval[direction].items():
            (line,) = ax.plot(
                ks, [block[f"top{k}"] for k in ks], marker="o", label=f"{pool_name} (n={block['n_pool']})"
            )
            ax.plot(
                ks,
                [block["random"][f"top{k}"] for k in ks],
                ls="--",
                color=line.get_color(),
                alpha=0.5,
                label=f"chance {pool_name}",
            )
        ax.set(title=direction, xlabel="k", ylabel="top-k accuracy", ylim=(0, 1.02), xscale="log")
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_projection(embeddings: np.ndarray, values: np.ndarray, label: str, path: str | Path) -> Path:
    """PCA of graph embeddings to 2-D, points coloured by a descriptor."""
    xy = PCA(n_components=2, random_state=0).fit_transform(np.asarray(embeddings, np.float64))
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    points = ax.scatter(xy[:, 0], xy[:, 1], c=values, s=12, cmap="viridis")
    fig.colorbar(points, ax=ax, label=label)
    ax.set(title=f"graph embeddings (PCA), coloured by {label}", xlabel="PC1", ylabel="PC2")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_correlation_heatmap(interpret: dict, path: str | Path, method: str = "pearson") -> Path:
    """Rows: principal components and the cross-validated read-out; columns: descriptors."""
    rows = [*interpret["pcs"], "read-out (CV)"]
    blocks = [*interpret["pcs"].values(), interpret["readout"]]
    names = list(interpret["readout"])
    grid = np.array([[block[n][method] for n in names] for block in blocks], dtype=float)
    fig, ax = plt.subplots(figsize=(1 + 0.9 * len(names), 1 + 0.5 * len(rows)))
    image = ax.imshow(np.nan_to_num(grid), cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for (i, j), v in np.ndenumerate(grid):
        ax.text(j, i, "nan" if math.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(image, ax=ax, label=f"{method} r")
    ax.set_title(f"{method} correlation: embeddings vs descriptors")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def _fmt(v) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _by_reason(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())


def _overlap_line(overlap: dict | None) -> str:
    if not overlap or not overlap.get("checked"):
        return "Overlap with the training set: not checked (the model's training table is not known)."
    text = (
        f"Overlap with the training set ({overlap['training_table']}): {overlap['in_training']} of "
        f"{overlap['gallery']} molecules ({100 * overlap['fraction']:.1f} %)"
    )
    return text + (
        f", {overlap['dropped']} dropped (exclude_training)."
        if overlap["excluded"]
        else ", kept (exclude_training off: scores include molecules the model trained on)."
    )


def _task_lines(task: str, r: dict) -> list[str]:
    """One downstream task: data, split and seeds, then a metric table with the reference row."""
    sizes = r["split"]["sizes"]
    lines = [
        f"### {task} ({r['kind']}: {', '.join(map(str, r['tasks']))})",
        "",
        f"- data: {r.get('source', '')}, {r['n']} of {r['n_input']} rows used"
        + (f" (random sample of {r['limit']} of {r['rows_in_file']} rows)" if r.get("limit") else "")
        + (
            f"; {r['rejected']} rejected: " + ", ".join(f"{k} {v}" for k, v in r.get("rejected_by_reason", {}).items())
            if r["rejected"]
            else ""
        ),
        f"- split: n train {sizes['train']} / valid {sizes['valid']} / test {sizes['test']}; seeds {r.get('seeds')}",
    ]
    c = r.get("censoring") or {}
    if c.get("present") and "policy" in c:
        lines.append(
            f"- censored labels (column `{c['column']}`): {c['rows']} rows {c['by_relation']}, "
            + ("excluded from training and metrics" if c["policy"] == "exclude" else "kept as exact values")
        )
    if r.get("split_from"):
        lines.append(f"- one of the tasks made from {r['split_from']}, whose labels are of two kinds")
    lines.append("")
    if "error" in r:
        return lines + [r["error"], ""]
    methods = r["methods"]
    first: dict[str, object] = next(iter(methods.values()), {})
    metrics = [k for k, v in first.items() if isinstance(v, dict) and "mean" in v]
    lines += ["| method | runs | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
    for method, m in methods.items():
        runs = "1 (seed-free)" if m.get("deterministic") else str(m.get("runs", len(m[metrics[0]]["values"])))
        lines.append(
            f"| {method} | {runs} | "
            + " | ".join(
                _fmt(m[k]["mean"]) + ("" if m[k]["sd"] is None else f" +- {_fmt(m[k]['sd'])}") for k in metrics
            )
            + " |"
        )
    if "reference" in r:
        lines.append(
            "| reference (training mean) | - | " + " | ".join(_fmt(r["reference"].get(k)) for k in metrics) + " |"
        )
    return lines + [""]


def render_markdown(report: dict) -> str:
    """Human-readable summary of `report` (the same content as report.json, in tables)."""
    lines = [f"# ACML evaluation: {report.get('model', '')}", ""]
    ks = report.get("top_k", [])
    if report.get("retrieval"):
        lines += [
            "## Cross-modal retrieval",
            "",
            f"Held-out molecules: {report.get('held_out_molecules')} "
            f"({report.get('held_out_rejected', 0)} input rows rejected). Cosine similarity; ties "
            "count against the query. Pool 128 = random pools averaged; pool all = whole held-out set.",
            "",
            _overlap_line(report.get("training_overlap")),
            "",
            "| direction | pool | " + " | ".join(f"top{k}" for k in ks) + " | mean rank | MRR |",
            "|---|---|" + "---|" * (len(ks) + 2),
        ]
        for direction, pools in report["retrieval"].items():
            for pool, b in pools.items():
                lines.append(
                    f"| {direction} | {pool} (n={b['n_pool']}) | "
                    + " | ".join(f"{_fmt(b[f'top{k}'])} ({_fmt(b['random'][f'top{k}'])})" for k in ks)
                    + f" | {b['mean_rank']:.1f} ({b['random']['mean_rank']:.1f}) | "
                    f"{_fmt(b['mrr'])} ({_fmt(b['random']['mrr'])}) |"
                )
        lines += ["", "Chance level in parentheses.", "", "![retrieval](retrieval_curves.png)", ""]
    if report.get("isomers"):
        lines += [
            "## Isomer discrimination",
            "",
            "Where is the true molecule ranked among its isomers' graphs (or modality vectors)? "
            "Chance level in parentheses.",
            "",
            "| isomer kind | direction | " + " | ".join(f"top{k}" for k in ks) + " | MRR | sets | queries |",
            "|---|---|" + "---|" * (len(ks) + 3),
        ]
        for kind, block in report["isomers"].items():
            for direction, r in block.items():
                if isinstance(r, dict) and "n_sets" in r:  # a direction (not rejected_by_reason)
                    chance = r.get("random", {})
                    cells = [
                        f"{_fmt(r.get(f'top{k}', r['accuracy'] if k == 1 else None))}"
                        f" ({_fmt(chance.get(f'top{k}', r['chance'] if k == 1 else None))})"
                        for k in ks
                    ]
                    lines.append(
                        f"| {kind} | {direction} | {' | '.join(cells)} | {_fmt(r.get('mrr'))} "
                        f"({_fmt(chance.get('mrr'))}) | {r['n_sets']} | {r['n_queries']} |"
                    )
        lines.append("")
        skipped = [
            f"- {kind}: {b['rejected']} rows skipped: {_by_reason(b['rejected_by_reason'])}"
            for kind, b in report["isomers"].items()
            if b.get("rejected")
        ]
        lines += [*skipped, ""] if skipped else []
    if report.get("interpret"):
        it = report["interpret"]
        names = list(it["readout"])
        lines += [
            "## Interpretability",
            "",
            f"{it['n']} molecules"
            + (
                f" ({it['rejected']} rows skipped: {_by_reason(it['rejected_by_reason'])})"
                if it.get("rejected")
                else ""
            )
            + ". Pearson (Spearman) between descriptors and principal components of the "
            "graph embeddings, and a 5-fold cross-validated ridge read-out.",
            "",
            "| | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
        ]
        for row, block in [*it["pcs"].items(), ("read-out (CV)", it["readout"])]:
            lines.append(
                f"| {row} | "
                + " | ".join(f"{_fmt(block[n]['pearson'])} ({_fmt(block[n]['spearman'])})" for n in names)
                + " |"
            )
        lines += ["", "![heatmap](correlation_heatmap.png)", "", "![projection](embedding_projection.png)", ""]
    if report.get("downstream"):
        lines += [
            "## Property prediction (scaffold split)",
            "",
            "Mean +- sd over seeds (runs in the second column; seed-free methods are fitted once). "
            "The reference row is a constant prediction of each label's training mean (for "
            "classification: the prevalence; ROC-AUC 0.5, PR-AUC = test prevalence).",
            "",
        ]
        for task, r in report["downstream"].items():
            lines += _task_lines(task, r)
    if report.get("quarantine", {}).get("rows"):
        q = report["quarantine"]
        lines += [
            "## Rejected rows",
            "",
            f"{q['rows']} rows, each with its reason, in `{q['file']}`.",
            "",
            "| section | stage | reason | rows |",
            "|---|---|---|---|",
        ]
        lines += [f"| {b['section']} | {b['stage']} | {b['reason']} | {b['rows']} |" for b in q["by_reason"]]
        lines.append("")
    return "\n".join(lines) + "\n"
