"""Draws bench.py's table: reads its rows as JSON on stdin, writes a PNG with
one panel per section. Each row is a bar at its median with its p90 as a
whisker; Sandpit's rows are blue, the baselines measured in the same run grey;
a log scale where a section's values span more than a factor of 20.

  python plot.py OUT.png < rows.json      (run by bench.py --plot)"""
import json, sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    rows = json.load(sys.stdin)
    sections = []
    for r in rows:
        if r["section"] not in sections: sections.append(r["section"])
    heights = [max(1.2, 0.32 * sum(r["section"] == s for r in rows) + 0.6) for s in sections]
    fig, axes = plt.subplots(len(sections), 1, figsize=(11, sum(heights)), gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, s in zip(axes[:, 0], sections):
        mine = [r for r in rows if r["section"] == s]
        names = [r["name"] for r in mine][::-1]
        med = [r["median"] for r in mine][::-1]
        p90 = [max(0.0, r["p90"] - r["median"]) for r in mine][::-1]
        colors = ["#9e9e9e" if r["baseline"] else "#1f77b4" for r in mine][::-1]
        ax.barh(range(len(mine)), med, xerr=[[0] * len(mine), p90], color=colors, error_kw={"elinewidth": 0.8, "capsize": 2})
        ax.set_yticks(range(len(mine)), names, fontsize=7)
        positive = [m for m in med if m > 0]
        if positive and max(positive) / min(positive) > 20: ax.set_xscale("log")
        ax.set_title(s, fontsize=8, loc="left")
        ax.tick_params(axis="x", labelsize=7)
        ax.set_xlabel("ms (median; whisker: p90)", fontsize=7)
    fig.suptitle("Sandpit (blue) beside baselines measured in the same run (grey)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / sum(heights)))   # room for the title above the first panel
    fig.savefig(sys.argv[1], dpi=110)


main()
