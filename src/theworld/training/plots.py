"""The loss-curve PNG of a run (matplotlib, Agg backend)."""

from __future__ import annotations

import json
import os


def plot_loss_curve(metrics_path: str, png_path: str, title: str = "training loss") -> bool:
    """Write a loss-curve PNG from ``metrics.jsonl`` (train records; eval accuracy on a second axis if present).

    Returns ``False`` (and writes nothing) when there is no train record yet.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, evals = [], []
    if os.path.isfile(metrics_path):
        with open(metrics_path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    rec = json.loads(line)
                    if rec.get("type") == "train":
                        train.append((rec["step"], rec["loss"]))
                    elif rec.get("type") == "eval" and "accuracy" in rec:
                        evals.append((rec["step"], rec["accuracy"]))
    if not train:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot([s for s, _ in train], [v for _, v in train], label="train loss", color="tab:blue")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (answer tokens)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if evals:
        ax2 = ax.twinx()
        ax2.plot([s for s, _ in evals], [v for _, v in evals], "o-", color="tab:orange", label="eval accuracy")
        ax2.set_ylabel("eval accuracy")
        ax2.set_ylim(0, 1)
    fig.tight_layout()
    tmp = png_path + ".tmp.png"
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, png_path)
    return True


__all__ = ["plot_loss_curve"]
