"""Write iddm's ready evaluation set: the held-out identities in the layout ``iddm benchmark`` reads.

    python benchmarks/make_eval_set.py [--output data/eval] [--lfw_users_only --output runs/eval_lfw3u]
    python benchmarks/make_eval_set.py --cfp [../shared/data/faces] --output runs/eval_cfp [--num_users 20]

Anti-DreamBooth layout (``<id>/set_A`` trained on, ``set_B`` the attacker's reference, ``set_C`` more
gallery photos of the user). Users are people the face prior never saw (``data/faces/SOURCES.md``):
the three held-out LFW people (5 photos to train on, 10 as the reference, 35 more in the gallery) and
the test fixtures' Obama (3 / 1), Macron and Ardern (1 / 1). Distractors (``set_C`` only, never
trained on): Biden and Sunak, and 5 photos of each LFW person the prior was pretrained on. Files are
copied unchanged; their credits are in ``data/faces/SOURCES.md`` and ``tests/fixtures/photos/CREDITS.md``.
With ``--lfw_users_only`` only the three LFW people are users (the multi-seed studies): Obama's and Macron's
photos are gallery distractors and Ardern is left out, so the gallery keeps the same 11 identities as the
README's table, which leaves Ardern out for time.

With ``--cfp CORPUS`` it writes the CFP evaluation set instead, for the 128-px prior: the 64 CFP identities that
``iddm pretrain`` holds out (:func:`iddm.prior.data.split_cfp`, seed 0; the list is committed in
``benchmarks/cfp_eval_split.json`` and checked against the corpus), frontal photos 01-04 as ``set_A`` (trained
on), 05-07 as ``set_B`` (the attacker's reference), 08-10 as ``set_C`` (gallery). The first ``--num_users`` of
them (sorted) are users, the rest gallery distractors (their ``set_B`` and ``set_C``). CFP is for non-commercial
research only: the photos are read from the folder you name and never committed. ``--shipped_users`` adds the two
people whose photos ship with iddm as users (Obama, the test fixtures' 3 / 1; Tony Blair, ``examples/``' 3 / 2):
the README's pictures on the 128-px prior show them, since CFP's avatars cannot be committed
(``--cfp CORPUS --num_users 0 --shipped_users --output runs/eval_readme``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from iddm.prior.config import HELD_OUT_LFW

ROOT = Path(__file__).resolve().parents[1]
LFW = ROOT / "data" / "faces" / "lfw7"
FIXTURES = ROOT / "tests" / "fixtures" / "photos"
PRETRAINED_LFW = ["Ariel_Sharon", "Colin_Powell", "Donald_Rumsfeld", "George_W_Bush"]
FIXTURE_USERS = {"obama": 3, "macron": 1, "ardern": 1}  # name -> photos trained on (the next one is the reference)
FIXTURE_DISTRACTORS = ["biden", "sunak"]
CFP_SPLIT = Path(__file__).resolve().parent / "cfp_eval_split.json"
SHIPPED_USERS = {"obama": (FIXTURES, "obama_*.jpg", 3), "tony_blair": (ROOT / "examples" / "tony_blair", "*.jpg", 3)}
CFP_SETS = {"set_A": range(1, 5), "set_B": range(5, 8), "set_C": range(8, 11)}  # frontal_NN numbers


def _copy(paths: list[Path], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for path in paths:
        shutil.copyfile(path, folder / path.name)


def cfp_held_out(corpus: Path) -> list[str]:
    """The held-out CFP identities of ``corpus`` (``cfp/NNN_Name`` folders), checked against the committed list."""
    from iddm.prior.data import find_identities, split_cfp

    committed = json.loads(CFP_SPLIT.read_text())
    held_out = split_cfp(list(find_identities(corpus)), committed["count"], committed["seed"])
    if held_out != committed["identities"]:
        differ = sorted(set(held_out) ^ set(committed["identities"]))[:5]
        raise SystemExit(
            f"{corpus}: its CFP split differs from {CFP_SPLIT.name} (e.g. {differ}): another copy of CFP?"
        )
    return held_out


def write_cfp(corpus: Path, output: Path, num_users: int) -> int:
    """Write the CFP evaluation set; returns the number of photos."""
    count = 0
    for i, identity in enumerate(cfp_held_out(corpus)):
        name = identity.split("/")[-1]
        for folder, numbers in CFP_SETS.items():
            if i >= num_users and folder == "set_A":
                continue  # a distractor: never trained on
            photos = [corpus / identity / f"frontal_{n:02d}.jpg" for n in numbers]
            photos = [p for p in photos if p.is_file()]
            _copy(photos, output / name / (folder if i < num_users else "set_C"))
            count += len(photos)
    return count


def write_shipped_users(output: Path) -> int:
    """Write the shipped people (``SHIPPED_USERS``: folder, pattern, photos trained on) as users; returns photos."""
    count = 0
    for name, (folder, pattern, train) in SHIPPED_USERS.items():
        photos = sorted(folder.glob(pattern))
        _copy(photos[:train], output / name / "set_A")
        _copy(photos[train:], output / name / "set_B")
        count += len(photos)
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=ROOT / "data" / "eval", help="Folder to (re)write.")
    parser.add_argument("--lfw_users_only", action="store_true", help="Only the LFW people are users (see above).")
    parser.add_argument(
        "--cfp", type=Path, nargs="?", const=Path("../shared/data/faces"), default=None,
        help="Write the CFP evaluation set from this face corpus folder (holding cfp/); default ../shared/data/faces.",
    )  # fmt: skip
    parser.add_argument("--num_users", type=int, default=20, help="With --cfp: how many held-out people are users.")
    parser.add_argument(
        "--shipped_users", action="store_true", help="With --cfp: Obama and Tony Blair (shipped photos) are users too."
    )
    args = parser.parse_args()
    if args.cfp is not None:
        if not (args.cfp / "cfp").is_dir():
            sys.exit(f"{args.cfp}: no cfp/ folder in it; pass the folder holding the corpora (data/faces/SOURCES.md).")
        if not (0 if args.shipped_users else 1) <= args.num_users <= 64:
            sys.exit(f"--num_users must be in 1..64 (0 with --shipped_users), got {args.num_users}.")
        shutil.rmtree(args.output, ignore_errors=True)
        count = write_cfp(args.cfp, args.output, args.num_users)
        count += write_shipped_users(args.output) if args.shipped_users else 0
        print(f"Wrote {args.output}: {count} photos.")
        return
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
