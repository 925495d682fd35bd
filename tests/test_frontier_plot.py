"""The frontier from records and blind eye labels: each sheet's share relative to vanilla's on the same sheet."""

import json
from pathlib import Path

import pytest
from conftest import benchmark_script


def _tool():
    return benchmark_script("frontier_plot")


def _write(path: Path, payload: dict) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))
    return str(path)


def test_excess_is_taken_against_vanilla_on_the_same_sheet():
    tool = _tool()
    # Sheet A: a strict judge (vanilla 1 of 4 distorted); sheet B: a lenient one. Image marked 2 has no face.
    sheet_a = {"labels": {"u": {"vanilla-off-seed0": [0, 0, 1, 0], "iddm-high-seed0": [1, 1, 0, 2]}}}
    sheet_b = {"labels": {"u": {"vanilla-off-seed0": [0, 0, 0, 0], "iddm-high-seed0": [1, 0, 0, 0]}}}
    # Identity "v" has no vanilla marks on its sheet: it cannot count.
    sheet_c = {"labels": {"v": {"iddm-high-seed0": [1, 1, 1, 1]}}}
    shares = tool.sheet_shares(
        [(sheet_a, "iddm-high-seed0"), (sheet_b, "iddm-high-seed0"), (sheet_c, "iddm-high-seed0")]
    )
    assert set(shares) == {"u"}
    share, excess = shares["u"]
    assert share == pytest.approx((2 / 3 + 1 / 4) / 2)
    assert excess == pytest.approx(((2 / 3 - 1 / 4) + (1 / 4 - 0)) / 2)
    assert tool.distorted_share([2, 2]) == 0.0


def test_points_pair_records_with_labels_and_write_table_and_plot(tmp_path):
    tool = _tool()
    for identity, rank1 in (("u", 0.5), ("w", 0.0)):
        backends = {"dlib": {"rank1": rank1, "match_rate": 0.25}, "mobilefacenet": {"rank1": 1.0, "match_rate": 0.5}}
        _write(tmp_path / "records" / "cells" / identity / "iddm-high-seed0" / "cell.json", {"backends": backends})
        _write(tmp_path / "records" / "cells" / identity / "vanilla-off-seed0" / "cell.json", {"backends": backends})
    labels = _write(
        tmp_path / "labels.json",
        {"labels": {"u": {"vanilla-off-seed0": [0, 1], "iddm-high-seed0": [1, 1]}}},  # "w" was never labelled
    )
    records = str(tmp_path / "records")
    high = tool.measure_point(
        {"name": "high", "records": records, "cell": "iddm-high-seed0", "labels": [[labels, "iddm-high-seed0"]]}
    )
    vanilla = tool.measure_point(
        {"name": "vanilla", "records": records, "cell": "vanilla-off-seed0", "vanilla": True, "labels": [[labels, ""]]}
    )
    assert high["identities"] == ["u"] and high["values"]["dlib rank1"] == [0.5]
    assert high["values"]["best rank1"] == [1.0]  # MobileFaceNet links better here
    assert high["values"]["excess distorted"] == [pytest.approx(0.5)]
    assert vanilla["values"]["distorted"] == [pytest.approx(0.5)] and vanilla["values"]["excess distorted"] == [0.0]
    text = tool.table([vanilla, high])
    row = "| high | 1 | " + " | ".join(f"{v:.2f} ± 0.00" for v in (0.5, 0.25, 1.0, 0.5, 1.0, 1.0, 0.5)) + " |"
    assert row in text
    tool.plot([vanilla, high], 1 / 64, tmp_path / "frontier.png")
    assert (tmp_path / "frontier.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="no identity"):
        tool.measure_point({"name": "x", "records": records, "cell": "cloak-high-seed0", "labels": [[labels, "k"]]})


def test_a_point_may_read_its_records_from_several_folders(tmp_path):
    tool = _tool()
    for part, identity in (("first", "u"), ("second", "w")):
        backends = {"dlib": {"rank1": 0.5, "match_rate": 0.25}}
        _write(tmp_path / part / "cells" / identity / "iddm-medium-seed0" / "cell.json", {"backends": backends})
    labels = _write(
        tmp_path / "labels.json",
        {"labels": {i: {"vanilla-off-seed0": [0, 0], "iddm-medium-seed0": [1, 0]} for i in ("u", "w")}},
    )
    point = {"name": "medium", "cell": "iddm-medium-seed0", "labels": [[labels, "iddm-medium-seed0"]]}
    both = tool.measure_point(point | {"records": [str(tmp_path / "first"), str(tmp_path / "second")]})
    assert both["identities"] == ["u", "w"]
    assert tool.measure_point(point | {"records": str(tmp_path / "first")})["identities"] == ["u"]
