"""The picture `mha heads` writes beside heads.json (RUN/heads.png): which heads matter, and how
many the model can lose.

Top: one heatmap per attention kind (rows: layers, columns: heads, numbered from 0 as in the
table) of the BLEU drop with that head alone removed, on one colour scale centred on 0 (red: BLEU
falls without the head, blue: it rises), each cell annotated with the drop and the head's role
while the grid is small enough to read. Bottom: the pruning curve, val BLEU against heads kept
(least important removed first), with the baseline and the lines 0.5 and 1.0 BLEU below it.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure  # a bare Figure draws with Agg and leaves pyplot alone

from mha.data.files import atomic_write

KINDS = {"encoder": "encoder self-attention", "decoder": "decoder self-attention",
         "cross": "encoder-decoder attention"}
ANNOTATE_UP_TO = 16  # heads per layer; wider grids leave no room for the numbers


def draw_heads(report: dict) -> Figure:
    """The heatmaps and the pruning curve of a `measure_heads` report."""
    records, base = report["heads"], report["baseline"]["val_bleu"]
    layers = 1 + max(r["layer"] for r in records)
    heads = 1 + max(r["head"] for r in records)
    figure = Figure(figsize=(max(10.0, 3 * (0.6 * heads + 1.2)), 0.55 * layers + 5.5),
                    layout="constrained")
    axes = figure.subplot_mosaic([list(KINDS), ["pruning"] * len(KINDS)],
                                 height_ratios=[0.55 * layers + 1.0, 3.5])
    scale = max((abs(r["bleu_drop"]) for r in records), default=0.0) or 1.0
    for kind, title in KINDS.items():
        grid = [[0.0] * heads for _ in range(layers)]
        for r in records:
            if r["kind"] == kind:
                grid[r["layer"]][r["head"]] = r["bleu_drop"]
        ax = axes[kind]
        image = ax.imshow(grid, cmap="RdBu_r", vmin=-scale, vmax=scale, aspect="auto")
        ax.set(title=title, xlabel="head", ylabel="layer", xticks=range(heads),
               yticks=range(layers))
        if heads <= ANNOTATE_UP_TO:
            for r in (r for r in records if r["kind"] == kind):
                text = f"{r['bleu_drop']:.2f}" + (f"\n{r['role']}" if r.get("role") else "")
                ax.text(r["head"], r["layer"], text, ha="center", va="center", fontsize=7,
                        color="white" if abs(r["bleu_drop"]) > 0.6 * scale else "black")
    figure.colorbar(image, ax=[axes[kind] for kind in KINDS], shrink=0.9,
                    label="BLEU drop, head removed")
    draw_pruning(axes["pruning"], report, base)
    figure.suptitle(f"{report['sentences']} {report['split']} sentences, checkpoint "
                    f"{report['checkpoint']} (step {report['checkpoint_step']}): greedy BLEU "
                    f"{base:.2f} with every head", fontsize=10)
    return figure


def draw_pruning(ax, report: dict, base: float) -> None:
    """Val BLEU against heads kept, the full model at the left."""
    curve, total = report["pruning"], len(report["heads"])
    ax.plot([step["kept"] for step in curve], [step["bleu"] for step in curve], "o-", ms=3,
            label="heads removed, least important first")
    ax.axhline(base, color="black", lw=1, label=f"every head ({base:.2f})")
    for drop, style in zip(report["can_remove"], (":", "--")):
        ax.axhline(base - float(drop), color="grey", lw=1, ls=style,
                   label=f"-{drop} BLEU: {report['can_remove'][drop]} of {total} heads can go")
    ax.set(xlim=(total + 0.5, -0.5), xlabel="heads kept", ylabel=f"{report['split']} BLEU",
           title="pruning curve")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def write_picture(run_dir: Path, report: dict) -> Path:
    """RUN/heads.png, written atomically."""
    path = Path(run_dir) / "heads.png"
    figure = draw_heads(report)
    atomic_write(path, lambda file: figure.savefig(file, format="png", dpi=100))
    return path
