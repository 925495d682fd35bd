"""The privacy-utility frontier as measured: per setting, black-box linkability against the avatars counted distorted
by eye (``benchmarks/eye_labels.py``), over the identities that have both.

    python benchmarks/frontier_plot.py --spec docs/results/frontier_cfp128.json --out docs/results/frontier_cfp128

The spec names the points::

    {"points": [{"name": "high, shape limit 2.0", "records": "docs/results/cells/cfp128_shapelim20",
                 "cell": "iddm-high-seed0", "labels": [["docs/results/eye_labels/FILE.json", "iddm-high-seed0"]]}]}

``records`` is a benchmark folder or an archive of its records (``benchmarks/archive_cells.py``), or a list of them
(one setting benchmarked in parts), ``cell`` the cell's folder name there, and each ``labels`` entry a label file with
the key its marks of this cell have there. The judge's threshold drifted between sheets (vanilla's avatars of the same
people read 0.04–0.43 distorted), so each sheet's share is taken relative to vanilla's on the same sheet: the excess
share of distorted faces, averaged over the sheets that labelled the identity. A point with ``"vanilla": true`` is
vanilla itself (excess 0).

Writes ``OUT.md`` (per point: identities, dlib and MobileFaceNet R1-U and match, the better of the two R1-U per
person (an attacker uses whichever links), distorted share and its excess over vanilla, mean ± sd over identities)
and ``OUT.png`` (excess distorted share against the better R1-U, one marker per point with its spread, the privacy
target of 2× chance drawn).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from eye_labels import distorted_share  # noqa: E402  (this folder is on sys.path when the script runs)

from iddm.images import atomic_write_text  # noqa: E402

VANILLA_KEY = "vanilla-off-seed0"
MARKERS = ["o", "s", "D", "^", "v", "P", "X", "<", ">", "h", "*"]
BLACK_BOX = ["dlib", "mobilefacenet"]
LINK = [("dlib", "rank1"), ("dlib", "match_rate"), ("mobilefacenet", "rank1"), ("mobilefacenet", "match_rate")]


def sheet_shares(label_files: list[tuple[dict, str]]) -> dict[str, tuple[float, float]]:
    """Identity -> (distorted share, its excess over vanilla on the same sheet), averaged over the sheets.

    ``label_files`` pairs each loaded label file (``{"labels": {identity: {key: marks}}}``) with the key of the
    point's cell in it. A sheet counts for an identity only where it also holds vanilla's marks.
    """
    per_identity: dict[str, list[tuple[float, float]]] = {}
    for labels, key in label_files:
        for identity, cells in labels["labels"].items():
            if key in cells and VANILLA_KEY in cells:
                share = distorted_share(cells[key])
                per_identity.setdefault(identity, []).append((share, share - distorted_share(cells[VANILLA_KEY])))
    return {identity: tuple(np.mean(pairs, axis=0)) for identity, pairs in per_identity.items()}


def record_folders(point: dict) -> list[Path]:
    """The point's ``records``: one folder or a list of them."""
    records = point["records"]
    return [Path(records)] if isinstance(records, str) else [Path(r) for r in records]


def link_rates(folders: list[Path], cell: str) -> dict[str, dict[str, float]]:
    """Identity -> ``{"dlib rank1": ..., ...}`` read from each ``cells/<identity>/<cell>/cell.json`` of
    ``folders``."""
    rates = {}
    for path in sorted(p for folder in folders for p in folder.glob(f"cells/*/{cell}/cell.json")):
        backends = json.loads(path.read_text())["backends"]
        rates[path.parent.parent.name] = {f"{b} {k}": backends[b][k] for b, k in LINK if b in backends}
    return rates


def measure_point(point: dict) -> dict:
    """One spec point -> its identities and per-identity values (link rates, distorted share, excess)."""
    rates = link_rates(record_folders(point), point["cell"])
    # Vanilla's own point reads vanilla's marks: its excess over itself is 0.
    keys = [VANILLA_KEY if point.get("vanilla") else key for _, key in point["labels"]]
    shares = sheet_shares([(json.loads(Path(f).read_text()), k) for (f, _), k in zip(point["labels"], keys)])
    identities = sorted(set(rates) & set(shares))
    if not identities:
        raise SystemExit(f"{point['name']}: no identity has both a record in {point['records']} and eye labels.")
    values = {k: [rates[i][k] for i in identities] for k in rates[identities[0]]}
    # The attacker uses whichever black-box system links best, per person.
    values["best rank1"] = [
        max(rates[i][f"{b} rank1"] for b in BLACK_BOX if f"{b} rank1" in rates[i]) for i in identities
    ]
    values["distorted"] = [shares[i][0] for i in identities]
    values["excess distorted"] = [shares[i][1] for i in identities]
    return {"name": point["name"], "identities": identities, "values": values}


def table(points: list[dict]) -> str:
    columns = [f"{b} {k}" for b, k in LINK] + ["best rank1", "distorted", "excess distorted"]
    lines = [
        "| setting | identities | " + " | ".join(columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for point in points:
        cells = [f"{np.mean(v):.2f} ± {np.std(v):.2f}" if (v := point["values"].get(c)) else "–" for c in columns]
        lines.append(f"| {point['name']} | {len(point['identities'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(points: list[dict], chance: float, path: Path) -> None:
    figure, axis = plt.subplots(figsize=(9.0, 5.0), dpi=120)
    most = max(len(point["identities"]) for point in points)
    for index, (point, marker) in enumerate(zip(points, MARKERS * len(points))):
        x, y = np.array(point["values"]["excess distorted"]), np.array(point["values"]["best rank1"])
        full = len(x) == most  # hollow markers: points measured on fewer people
        axis.errorbar(
            x.mean(),
            y.mean(),
            xerr=x.std(),
            yerr=y.std(),
            fmt=marker,
            capsize=3,
            alpha=0.85,
            markersize=7,
            color=plt.cm.tab20(2 * index % 20 + 2 * index // 20),
            markerfacecolor=None if full else "white",
            label=f"{point['name']} ({len(x)})",
        )
    axis.axhline(2 * chance, color="grey", linestyle="--", linewidth=1)
    axis.text(axis.get_xlim()[0], 2 * chance, " privacy target: 2× chance", fontsize=7, va="bottom", color="grey")
    axis.axvline(0, color="grey", linestyle=":", linewidth=1)
    axis.set_xlabel("avatars counted distorted by eye, minus vanilla's on the same sheet (mean ± sd over people)")
    axis.set_ylabel("rank-1 of the user, best of dlib and MobileFaceNet (mean ± sd)")
    axis.set_title("Measured frontier: lower left is better (people per point in brackets)", fontsize=9)
    axis.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", type=Path, required=True, help="JSON file naming the points (see above).")
    parser.add_argument("--out", type=Path, required=True, help="Stem of OUT.md and OUT.png.")
    parser.add_argument("--chance", type=float, default=1 / 64, help="Rank-1 chance: 1 / gallery identities.")
    args = parser.parse_args()
    try:
        spec = json.loads(args.spec.read_text())["points"]
    except (OSError, ValueError, KeyError) as error:
        raise SystemExit(f"{args.spec}: not a readable spec with a 'points' list ({error}).") from None
    missing = [
        p for point in spec for p in [*record_folders(point), *(Path(f) for f, _ in point["labels"])] if not p.exists()
    ]
    if missing:
        raise SystemExit(f"{args.spec}: {len(missing)} path(s) it names do not exist, e.g. {missing[0]}.")
    points = [measure_point(point) for point in spec]
    text = table(points)
    atomic_write_text(args.out.with_suffix(".md"), text)
    plot(points, args.chance, args.out.with_suffix(".png"))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
