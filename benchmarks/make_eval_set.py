"""Write iddm's ready evaluation set: the held-out identities in the layout ``iddm benchmark`` reads.

    python benchmarks/make_eval_set.py [--output data/eval] [--lfw_users_only --output runs/eval_lfw3u]

Anti-DreamBooth layout (``<id>/set_A`` trained on, ``set_B`` the attacker's reference, ``set_C`` more
gallery photos of the user). Users are people the face prior never saw (``data/faces/SOURCES.md``):
the three held-out LFW people (5 photos to train on, 10 as the reference, 35 more in the gallery) and
the test fixtures' Obama (3 / 1), Macron and Ardern (1 / 1). Distractors (``set_C`` only, never
trained on): Biden and Sunak, and 5 photos of each LFW person the prior was pretrained on. Files are
copied unchanged; their credits are in ``data/faces/SOURCES.md`` and ``tests/fixtures/photos/CREDITS.md``.
With ``--lfw_users_only`` only the three LFW people are users (the multi-seed studies): Obama's and Macron's
photos are gallery distractors and Ardern is left out, so the gallery keeps the same 11 identities as the
README's table, which leaves Ardern out for time.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LFW = ROOT / "data" / "faces" / "lfw7"
FIXTURES = ROOT / "tests" / "fixtures" / "photos"
HELD_OUT_LFW = ["Gerhard_Schroeder", "Hugo_Chavez", "Tony_Blair"]
PRETRAINED_LFW = ["Ariel_Sharon", "Colin_Powell", "Donald_Rumsfeld", "George_W_Bush"]
FIXTURE_USERS = {"obama": 3, "macron": 1, "ardern": 1}  # name -> photos trained on (the next one is the reference)
FIXTURE_DISTRACTORS = ["biden", "sunak"]


def _copy(paths: list[Path], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for path in paths:
        shutil.copyfile(path, folder / path.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=ROOT / "data" / "eval", help="Folder to (re)write.")
    parser.add_argument("--lfw_users_only", action="store_true", help="Only the LFW people are users (see above).")
    args = parser.parse_args()
    shutil.rmtree(args.output, ignore_errors=True)
    for name in HELD_OUT_LFW:
        photos = sorted((LFW / name).glob("*.jpg"))
        _copy(photos[:5], args.output / name / "set_A")
        _copy(photos[5:15], args.output / name / "set_B")
        _copy(photos[15:], args.output / name / "set_C")
    for name, train in FIXTURE_USERS.items():
        photos = sorted(FIXTURES.glob(f"{name}_*.jpg"))
        if args.lfw_users_only:
            if name != "ardern":
                _copy(photos, args.output / name / "set_C")
            continue
        _copy(photos[:train], args.output / name / "set_A")
        _copy(photos[train:], args.output / name / "set_B")
    for name in FIXTURE_DISTRACTORS:
        _copy(sorted(FIXTURES.glob(f"{name}_*.jpg")), args.output / name / "set_C")
    for name in PRETRAINED_LFW:
        _copy(sorted((LFW / name).glob("*.jpg"))[:5], args.output / name / "set_C")
    print(f"Wrote {args.output}: {sum(1 for _ in args.output.rglob('*.jpg'))} photos.")


if __name__ == "__main__":
    main()
