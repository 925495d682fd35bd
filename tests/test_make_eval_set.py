"""The README's evaluation users: the shipped people, split into training and reference photos, copied unchanged."""

from pathlib import Path

from conftest import benchmark_script

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    return benchmark_script("make_eval_set")


def test_shipped_users_are_split_and_copied_unchanged(tmp_path):
    tool = _tool()
    count = tool.write_shipped_users(tmp_path)
    trained = {name: sorted(p.name for p in (tmp_path / name / "set_A").iterdir()) for name in ("obama", "tony_blair")}
    reference = {
        name: sorted(p.name for p in (tmp_path / name / "set_B").iterdir()) for name in ("obama", "tony_blair")
    }
    assert trained["obama"] == ["obama_1.jpg", "obama_2.jpg", "obama_3.jpg"]
    assert trained["tony_blair"] == ["Tony_Blair_0001.jpg", "Tony_Blair_0002.jpg", "Tony_Blair_0003.jpg"]
    assert reference == {"obama": ["obama_4.jpg"], "tony_blair": ["Tony_Blair_0004.jpg", "Tony_Blair_0005.jpg"]}
    assert count == 9
    copied = tmp_path / "tony_blair" / "set_B" / "Tony_Blair_0005.jpg"
    assert copied.read_bytes() == (ROOT / "examples" / "tony_blair" / "Tony_Blair_0005.jpg").read_bytes()
