"""Draw docs/three_regimes.png: a schematic (not data) of the three regimes of pruning.

The temperature x density plane as docs/method.md#the-idea describes it (Zhou et al. 2023):
Regime I (a negative LMC barrier: poorly connected, low CKA) at low density and cold dense
training; II-A (connected, relatively low CKA) at hot training; II-B (connected, high CKA) at
high density and cold training. Pruning should train hotter in I, colder in II-A, and stay in
II-B; the best temperature at a density is about the coldest one that is still connected.
The boundaries are drawn by hand, as in the paper: their shape is illustrative only.

    .venv/bin/python docs/make_schematic.py [--out PATH]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "three_regimes.png"
COLORS = {"I": "#e8a0a0", "II-A": "#f3d58c", "II-B": "#9fcfa0"}
CAPTIONS = {
    "I": "Regime I: LMC barrier clearly < 0 (poorly connected), low CKA  ->  train hotter",
    "II-A": "Regime II-A: barrier ~ 0 (connected), relatively low CKA  ->  train colder",
    "II-B": "Regime II-B: barrier ~ 0 (connected), high CKA  ->  near the optimum: stay",
}


def connected_from(density: np.ndarray) -> np.ndarray:
    """Temperature (0 = coldest, 1 = hottest) above which pruned copies are connected: hotter
    training is needed the sparser the model; dense enough models are connected at any."""
    return 0.62 * np.clip(1 - density / 0.78, 0, None) ** 1.3


def similar_below(density: np.ndarray) -> np.ndarray:
    """Temperature below which connected copies also give similar outputs (high CKA)."""
    return 0.08 + 0.5 * density


def draw(out: Path) -> Path:
    density = np.linspace(0, 1, 400)
    t_connected = connected_from(density)
    t_similar = np.maximum(t_connected, similar_below(density))
    fig, ax = plt.subplots(figsize=(9, 5), dpi=100)
    ax.fill_betweenx(density, 0, t_connected, color=COLORS["I"], lw=0)
    ax.fill_betweenx(density, t_connected, t_similar, color=COLORS["II-B"], lw=0)
    ax.fill_betweenx(density, t_similar, 1, color=COLORS["II-A"], lw=0)
    ax.plot(t_connected, density, color="0.25", lw=1.5)
    ax.plot(t_similar[t_similar > t_connected], density[t_similar > t_connected], color="0.25",
            lw=1.0, ls=":")
    best = np.minimum(t_connected + 0.03, 0.97)
    ax.plot(best, density, color="#1f4e9c", lw=2.2, ls="--")
    ax.annotate("best temperature:\ncoldest still connected", xy=(best[150], density[150]),
                xytext=(0.62, 0.22), color="#1f4e9c", fontsize=10,
                arrowprops={"arrowstyle": "->", "color": "#1f4e9c"})

    for name, (x, y) in {"I": (0.13, 0.14), "II-A": (0.8, 0.62), "II-B": (0.2, 0.8)}.items():
        ax.text(x, y, name, fontsize=22, fontweight="bold", ha="center", va="center", color="0.15")
    arrow = {"arrowstyle": "-|>,head_width=0.35,head_length=0.6", "lw": 2.2, "color": "0.15"}
    ax.annotate("", xy=(0.42, 0.14), xytext=(0.22, 0.14), arrowprops=arrow)
    ax.text(0.32, 0.18, "hotter", ha="center", fontsize=11)
    ax.annotate("", xy=(0.55, 0.62), xytext=(0.72, 0.62), arrowprops=arrow)
    ax.text(0.635, 0.66, "colder", ha="center", fontsize=11)
    ax.text(0.2, 0.72, "stay", ha="center", fontsize=11)

    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xticks([0.03, 0.97], ["cold", "hot"])
    ax.set_yticks([0.03, 0.97], ["sparse", "dense"])
    ax.set_xlabel("temperature of dense training "
                  "(fewer epochs, smaller batch, larger SAM rho = hotter)", fontsize=11)
    ax.set_ylabel("density (kept fraction)", fontsize=11)
    ax.set_title("The three regimes of pruning (schematic, after Zhou et al. 2023)", fontsize=13)
    handles = [Patch(facecolor=COLORS[r], edgecolor="0.25", label=CAPTIONS[r]) for r in CAPTIONS]
    fig.legend(handles=handles, loc="lower center", ncol=1, frameon=False, fontsize=10.5,
               bbox_to_anchor=(0.5, 0.005))
    fig.subplots_adjust(left=0.1, right=0.98, top=0.93, bottom=0.3)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"PNG to write (default {DEFAULT_OUT})")
    print(draw(parser.parse_args(argv).out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
