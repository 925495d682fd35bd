"""Tables of ``utility.face`` (:class:`iddm.evaluate.results.FaceUtility`) for the evaluate and benchmark reports."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from iddm.evaluate.report import fmt
from iddm.evaluate.results import FaceUtility

FACE_TITLE = (
    "Faces a person would see (SER-FIQ, consistency, attribute agreement, colour, face shape, KID to real faces: "
    "×vanilla; Fréchet distance and KID to vanilla's generations and KID to the dataset's real faces on TAEF2 "
    "features: SER-FIQ, consistency and shape missed painterly, caricatured avatars that KID→real sees)"
)


def _relative(value: Any, ratio: Any, digits: int = 3) -> str:
    return fmt(value, digits) + ("" if ratio is None else f" (×{fmt(ratio)})")


def face_rows(face: FaceUtility | None) -> list[list[str]]:
    """``[metric, value, note]`` rows of ``iddm evaluate``'s utility table."""
    if face is None:
        return []
    relative = face.relative()
    photos = ", ".join(f"{k} {v}" for k, v in face.attributes_photos.items())
    per_attribute = ", ".join(f"{k} {fmt(v)}" for k, v in face.attribute_agreement.items())
    note = "; ".join(face.notes)
    return [
        ["SER-FIQ (SFace, higher = better)", _relative(face.serfiq, relative["serfiq"]), note],
        ["consistency (mean pairwise SFace cosine)", _relative(face.consistency, relative["consistency"]), ""],
        [
            "attribute agreement with the user's photos",
            _relative(face.agreement_mean, relative["attribute_agreement"]),
            f"photos: {photos}; {per_attribute}" if photos else "",
        ],
        ["colour: user's photos / avatars", f"{fmt(face.colour_photos)} / {fmt(face.colour_avatars)}", ""],
        [
            "face-shape distance (1 = typical real face)",
            _relative(face.shape_distance, relative["shape_distance"], 2),
            "",
        ],
        [
            "landmark displacement of X+δ (px per 64 px)",
            fmt(face.landmark_displacement),
            f"{face.landmark_pairs} photo pairs",
        ],
        ["Fréchet distance to vanilla (TAEF2)", fmt(face.frechet_to_vanilla, 3), ""],
        ["KID to vanilla (TAEF2)", fmt(face.kid_to_vanilla, 4), ""],
        ["KID to real faces (TAEF2)", _relative(face.kid_to_real, relative["kid_to_real"], 3), ""],
    ]


FACE_COLUMNS = (
    ("SER-FIQ", "face_serfiq", 3),
    ("×van.", "face_serfiq_rel", 2),
    ("consistency", "face_consistency", 3),
    ("×van.", "face_consistency_rel", 2),
    ("attr. agreement", "face_attribute_agreement", 2),
    ("×van.", "face_attribute_agreement_rel", 2),
    ("colour", "face_colour_avatars", 2),
    ("shape dist.", "face_shape_distance", 2),
    ("×van.", "face_shape_distance_rel", 2),
    ("landmark Δ px/64", "face_landmark_displacement", 2),
    ("FD→van.", "face_frechet_to_vanilla", 3),
    ("KID→van.", "face_kid_to_vanilla", 4),
    ("KID→real", "face_kid_to_real", 3),
    ("×van.", "face_kid_to_real_rel", 2),
)


def face_table(rows: Sequence[Mapping[str, Any]], with_identity: bool) -> tuple[list[str], list[list[str]]]:
    """The face-utility table of ``results.md`` and ``report.html``: per cell, or the means of ``aggregate``."""
    header = (["identity"] if with_identity else []) + ["method", "level"] + [label for label, _, _ in FACE_COLUMNS]
    body = []
    for row in rows:
        if row.get("status") == "failed" or not any(row.get(column) is not None for _, column, _ in FACE_COLUMNS):
            continue
        cells = ([str(row["identity"])] if with_identity else []) + [str(row["method"]), str(row["level"])]
        body.append(cells + [fmt(row.get(column), digits) for _, column, digits in FACE_COLUMNS])
    return header, body
