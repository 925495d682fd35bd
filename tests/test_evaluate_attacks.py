"""The over-decoupling attacks (rank-last, the user's rank and z-score, chance flags) and bad input of
``iddm evaluate``, on real photos and real FR models."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import matplotlib.cbook
import numpy as np
import pytest
import skimage.data
from PIL import Image

from iddm.cli import main
from iddm.evaluate.attacker import USER_LABEL, attacker_knowledge, load_backends
from iddm.evaluate.linkability import FaceSet, embed_groups, linkability
from iddm.images import load_photo, save_png


def _package_photos() -> dict[str, np.ndarray]:
    """Two more real identities from installed packages (Eileen Collins, Grace Hopper)."""
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as handle:
        hopper = np.asarray(Image.open(handle).convert("RGB"))
    return {"collins": skimage.data.astronaut(), "hopper": hopper}


@pytest.fixture(scope="module")
def facenet() -> dict:
    return load_backends(["facenet"])


@pytest.fixture(scope="module")
def faces(identity_photos, facenet) -> dict[str, FaceSet]:
    """Every fixture identity and the two package photos, embedded by FaceNet."""
    groups = {name: [load_photo(p) for p in paths] for name, paths in identity_photos.items()}
    groups |= {name: [image] for name, image in _package_photos().items()}
    return embed_groups(groups, list(facenet.values()))


def _attack(faces: dict[str, FaceSet], probes: str, user: str, facenet: dict):
    """Ardern-style probes (real photos of ``probes``) attacked as generations of ``user``; the probe identity
    is not in the gallery (the generations' person is unknown to the attacker)."""
    distractors = {n: f for n, f in faces.items() if n not in (probes, user)}
    reference, gallery = attacker_knowledge(faces[user], distractors)
    return linkability(faces[probes], reference, gallery, USER_LABEL, facenet["facenet"])


def test_rank_last_fires_when_every_generation_is_least_like_the_user(faces, facenet):
    # Under FaceNet, Eileen Collins is the least similar of the 6 gallery identities to both photos of Jacinda
    # Ardern: generations that look like that are "further than any stranger" from Collins, which links them.
    m = _attack(faces, "ardern", "collins", facenet)
    assert m.num_faces == 2 and m.num_identities == 6 and m.chance_rank1 == pytest.approx(1 / 6)
    assert m.rank_last == 1.0 and m.mean_user_rank == 6.0 and m.rank1 == 0.0
    assert m.user_z < -1
    # 1.0 - 1/6 exceeds 2 binomial standard errors at chance (2 * sqrt(1/6 * 5/6 / 2) = 0.53): flagged.
    assert m.rank_standard_error == pytest.approx(np.sqrt(1 / 6 * 5 / 6 / 2))
    assert "rank_last" in m.flags and m.over_decoupled and not m.linkable


def test_rank_last_sits_at_chance_for_a_stranger(faces, facenet):
    # The same probes attacked as generations of Grace Hopper, who ranks in the middle for them: nothing fires.
    m = _attack(faces, "ardern", "hopper", facenet)
    assert m.rank_last == 0.0 and m.rank1 == 0.0 and 2 <= m.mean_user_rank <= 5
    assert abs(m.user_z) < 1.5 and m.flags == []
    # Averaged over every choice of the user among the same identities, each probe has exactly one first and one
    # last identity: rank-1 and rank-last are exactly chance, and the mean rank is exactly (I + 1) / 2.
    identities = [n for n in faces if n != "ardern"]
    distractors = {n: faces[n] for n in identities}
    rates = []
    for user in identities:
        others = {n: f for n, f in distractors.items() if n != user}
        reference, gallery = attacker_knowledge(faces[user], others)
        rates.append(linkability(faces["ardern"], reference, gallery, USER_LABEL, facenet["facenet"]))
    assert np.mean([r.rank_last for r in rates]) == pytest.approx(1 / len(identities))
    assert np.mean([r.rank1 for r in rates]) == pytest.approx(1 / len(identities))
    assert np.mean([r.mean_user_rank for r in rates]) == pytest.approx((len(identities) + 1) / 2)


def test_the_real_person_ranks_first_with_a_high_z(faces, facenet):
    reference_only = FaceSet(faces["obama"].detected[3:], {k: e[3:] for k, e in faces["obama"].embeddings.items()})
    probes = FaceSet(faces["obama"].detected[:3], {k: e[:3] for k, e in faces["obama"].embeddings.items()})
    distractors = {n: f for n, f in faces.items() if n != "obama"}
    reference, gallery = attacker_knowledge(reference_only, distractors)
    m = linkability(probes, reference, gallery, USER_LABEL, facenet["facenet"])
    assert m.rank1 == 1.0 and m.mean_user_rank == 1.0 and m.rank_last == 0.0
    assert m.user_z > 2 and m.flags == ["rank1", "user_z"] and m.linkable and not m.over_decoupled


# ----------------------------------------------------------------------------------------------------
# iddm evaluate: the flag in the reports, and bad input
# ----------------------------------------------------------------------------------------------------


def _copy(paths, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for path in paths:
        shutil.copy(path, folder / Path(path).name)
    return folder


@pytest.fixture(scope="module")
def gallery_dir(tmp_path_factory, identity_photos) -> Path:
    """Obama, Macron, Biden, Sunak and Hopper, a folder each."""
    root = tmp_path_factory.mktemp("gallery")
    for name in ("obama", "macron", "biden", "sunak"):
        _copy(identity_photos[name], root / name)
    save_png(root / "hopper" / "hopper.png", _package_photos()["hopper"])
    return root


def _evaluate(images: Path, reference: Path, gallery: Path, out: Path, *extra: str) -> dict:
    args = ["evaluate", "--images", str(images), "--reference", str(reference), "--gallery", str(gallery)]
    assert main([*args, "--output_dir", str(out), "--backends", "facenet", *extra]) == 0
    return json.loads((out / "metrics.json").read_text())


def test_evaluate_flags_over_decoupling_in_its_reports(tmp_path, identity_photos, gallery_dir):
    probes = _copy(identity_photos["ardern"], tmp_path / "probes")
    reference = tmp_path / "reference"
    save_png(reference / "collins.png", _package_photos()["collins"])
    metrics = _evaluate(probes, reference, gallery_dir, tmp_path / "out")
    m = metrics["backends"]["facenet"]
    assert m["rank_last"] == 1.0 and m["flags"][0] == "rank_last" and m["user_z"] < 0
    report = (tmp_path / "out" / "report.md").read_text()
    assert "facenet (unknown): over-decoupled: rank-last 1.00 > chance 0.17 + 0.53" in report
    assert "over-decoupled" in (tmp_path / "out" / "report.html").read_text()


def test_evaluate_skips_a_corrupt_gallery_photo_and_an_empty_identity(tmp_path, identity_photos, gallery_dir, caplog):
    gallery = tmp_path / "gallery"
    shutil.copytree(gallery_dir, gallery)
    (gallery / "macron" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (gallery / "nobody").mkdir()
    probes = _copy(identity_photos["obama"][:2], tmp_path / "probes")
    reference = _copy(identity_photos["obama"][3:], tmp_path / "reference")
    with caplog.at_level(logging.WARNING, logger="iddm"):
        metrics = _evaluate(probes, reference, gallery, tmp_path / "out")
    assert metrics["gallery"]["identities"] == ["user", "biden", "hopper", "macron", "obama", "sunak"]
    skipped = metrics["gallery"]["skipped"]
    assert len(skipped) == 2 and "broken.jpg" in skipped[0] and "nobody" in skipped[1]
    assert any("broken.jpg" in w for w in metrics["warnings"])
    assert any("nobody" in r.getMessage() for r in caplog.records)
    assert metrics["gallery"]["num_photos"] == 1 + 4 + 2 + 1 + 1 + 1  # macron keeps its two real photos


def test_evaluate_warns_about_images_without_a_face_and_leaves_them_out(
    tmp_path, identity_photos, gallery_dir, caplog
):
    probes = _copy(identity_photos["ardern"][:1], tmp_path / "probes")
    save_png(probes / "zz_coffee.png", skimage.data.coffee())  # a real photo without a face
    reference = _copy(identity_photos["ardern"][1:], tmp_path / "reference")
    with caplog.at_level(logging.WARNING, logger="iddm"):
        metrics = _evaluate(probes, reference, gallery_dir, tmp_path / "out")
    assert any(
        "No face detected in 1 of 2" in r.getMessage() and "zz_coffee.png" in r.getMessage() for r in caplog.records
    )
    assert metrics["utility"]["undetected_images"] == ["zz_coffee.png"]
    assert metrics["utility"]["face_detection_rate"] == 0.5
    m = metrics["backends"]["facenet"]
    assert m["num_probes"] == 2 and m["num_faces"] == 1 and m["rank1"] in (0.0, 1.0)  # over the one face only

    only_coffee = tmp_path / "no_faces"
    save_png(only_coffee / "coffee.png", skimage.data.coffee())
    metrics = _evaluate(only_coffee, reference, gallery_dir, tmp_path / "out2")
    m = metrics["backends"]["facenet"]
    assert m["num_faces"] == 0 and m["fdfr"] == 1.0
    for key in ("ism", "rank1", "rank_last", "mean_user_rank", "user_z", "match_rate", "rank1_targeted"):
        assert m[key] is None, key  # undefined, never 0
    assert "| – (" in (tmp_path / "out2" / "report.md").read_text()


def test_evaluate_warns_when_the_reference_photos_are_not_one_person(tmp_path, identity_photos, gallery_dir, caplog):
    probes = _copy(identity_photos["ardern"][:1], tmp_path / "probes")
    reference = _copy([identity_photos["ardern"][1], identity_photos["sunak"][0]], tmp_path / "reference")
    with caplog.at_level(logging.WARNING, logger="iddm"):
        metrics = _evaluate(probes, reference, gallery_dir, tmp_path / "out")
    (warning,) = metrics["warnings"]
    assert "may not all show the user: ardern_2.jpg vs sunak_1.jpg (facenet" in warning
    assert any("may not all show the user" in r.getMessage() for r in caplog.records)

    same_person = _copy(identity_photos["obama"][2:], tmp_path / "obama_reference")
    metrics = _evaluate(probes, same_person, gallery_dir, tmp_path / "out2")
    assert metrics["warnings"] == []


# ----------------------------------------------------------------------------------------------------
# The stalker (R1-T) across benchmark cells
# ----------------------------------------------------------------------------------------------------


def test_the_stalker_searches_other_identities_generations_of_the_same_cell_kind(tmp_path, faces, facenet):
    """Real photos stand in for generations: Obama's three photos as his cells' "generations", one photo of
    Macron and of Ardern as theirs; each user's held-out photo is the stalker's query."""
    from iddm.evaluate.benchmark import stalker_pools
    from iddm.evaluate.cells import PROBES_FILE, Cell, save_probes
    from iddm.evaluate.linkability import subset
    from iddm.evaluate.results import CellRecord, PerturbationQuality, Utility, WallSeconds

    split = {"obama": ([0, 1, 2], [3]), "macron": ([0], [1]), "ardern": ([0], [1])}
    cells = [Cell(name, "iddm", "high") for name in split] + [Cell("obama", "vanilla", "off")]
    records = []
    for cell in cells:
        generations, held_out = (subset(faces[cell.identity], idx) for idx in split[cell.identity])
        distractors = {n: f for n, f in faces.items() if n != cell.identity}
        reference, gallery = attacker_knowledge(held_out, distractors)
        m = linkability(generations, reference, gallery, USER_LABEL, facenet["facenet"])
        assert m.rank1_targeted_pool == "real photos"  # one cell alone: other people's real photos
        save_probes(cell.folder(tmp_path) / PROBES_FILE, generations, reference)
        utility = Utility(1, [1, 1], 0.0, 1.0, [], None, None, PerturbationQuality(), None, None, None, None)
        records.append(
            CellRecord(
                cell.identity,
                cell.method,
                cell.level,
                "iddm",
                [],
                "run",
                "images",
                [],
                WallSeconds(),
                {"facenet": m},
                utility,
            )  # fmt: skip
        )
    pooled = {(r.identity, r.method): r.backends["facenet"] for r in stalker_pools(records, tmp_path)}
    obama = pooled[("obama", "iddm")]
    assert obama.rank1_targeted_pool == "generations"
    assert obama.chance_rank1_targeted == pytest.approx(3 / 5)  # his 3 "generations" among 3 + Macron's + Ardern's
    assert obama.rank1_targeted == 1.0  # his held-out photo finds his own photos first
    assert pooled[("macron", "iddm")].chance_rank1_targeted == pytest.approx(1 / 5)
    # The vanilla cell has no other identity's vanilla cell: it keeps the pool of real photos, labelled so.
    assert pooled[("obama", "vanilla")].rank1_targeted_pool == "real photos"
