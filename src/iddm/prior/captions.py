"""Captions of pretraining photos, built from the labels the face corpora carry.

Labels come from where a photo sits and how it is named, never from a model:

* UTKFace (``AGE_GENDER_RACE_DATE.jpg``): age band, gender, ethnicity;
* CFP (``NNN_Name/frontal_NN.jpg``, ``profile_NN.jpg``): the view;
* every corpus: greyscale pixels make "a black and white photo".

:func:`caption` turns a label dict into a prompt in Stable Diffusion's style ("a photo of an old Black woman",
"a black and white photo of a person", "a profile photo of a young man"); :func:`drop_labels` removes labels at
random during training, so short prompts ("a photo of a woman") mean something too. :func:`batch_captions` draws a
training batch's captions and :class:`CaptionBank` encodes each distinct caption once.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from iddm.prior.config import PretrainConfig

UTK_NAME = re.compile(r"^(\d{1,3})_([01])_([0-4])_\d+")
"""UTKFace file names: age (years), gender (0 male, 1 female), race (0 White, 1 Black, 2 Asian, 3 Indian, 4 Others)."""
UTK_ETHNICITY = {0: "White", 1: "Black", 2: "Asian", 3: "Indian"}  # 4 ("Others") is left unsaid
AGE_BANDS = ((3, "baby"), (13, "child"), (20, "teenage"), (40, "young"), (60, "middle-aged"), (200, "old"))
"""Upper age bound (exclusive) and its word; the bands the attribute model of the evaluation uses too."""
LABEL_ORDER = ("age", "ethnicity", "gender")
"""Order of the words before the noun ("a photo of an old Black woman")."""


def age_band(age: int) -> str:
    """The word of ``age`` (years) in :data:`AGE_BANDS`."""
    return next(word for bound, word in AGE_BANDS if age < bound)


def labels_from_path(path: Path, gray: bool) -> dict[str, str]:
    """The labels a photo's corpus gives it: ``gray``/``view`` always, ``age``/``gender``/``ethnicity`` for UTKFace.

    Returns:
        ``{"gray": "yes"|"no", "view": "frontal"|"profile", ...}``; values are words, not codes.
    """
    labels = {"gray": "yes" if gray else "no", "view": "profile" if path.stem.startswith("profile") else "frontal"}
    match = UTK_NAME.match(path.name)
    if match:
        age, gender, race = (int(g) for g in match.groups())
        labels["age"] = age_band(age)
        labels["gender"] = "female" if gender else "male"
        if race in UTK_ETHNICITY:
            labels["ethnicity"] = UTK_ETHNICITY[race]
    return labels


def _noun(labels: dict[str, str]) -> str:
    gender, age = labels.get("gender"), labels.get("age")
    if gender is None:
        return "baby" if age == "baby" else "child" if age == "child" else "person"
    young = age in ("baby", "child", "teenage")
    return ("girl" if young else "woman") if gender == "female" else ("boy" if young else "man")


def caption(labels: dict[str, str]) -> str:
    """A prompt for ``labels``: ``a [black and white |profile ]photo of a[n] [age] [ethnicity] <noun>``.

    The age word is dropped where the noun says it (a baby, a child), kept for "teenage boy"; gender picks the noun.
    """
    style = "black and white " if labels.get("gray") == "yes" else ""
    view = "profile " if labels.get("view") == "profile" else ""
    noun = _noun(labels)
    words = []
    for key in LABEL_ORDER:
        value = labels.get(key)
        if key == "age" and value in ("baby", "child"):
            continue
        if value and key != "gender":
            words.append(value)
    phrase = " ".join([*words, noun])
    article = "an" if phrase[0].lower() in "aeiou" else "a"
    return f"a {style}{view}photo of {article} {phrase}"


def drop_labels(labels: dict[str, str], probability: float, generator: torch.Generator) -> dict[str, str]:
    """``labels`` without each of age, ethnicity and gender with ``probability`` (one draw each, in a fixed order).

    ``gray`` and ``view`` are kept: they describe the pixels, and the prompt should never say "photo" of a grey one.
    """
    draws = torch.rand(len(LABEL_ORDER), generator=generator)
    dropped = {key for key, draw in zip(LABEL_ORDER, draws.tolist(), strict=True) if draw < probability}
    return {k: v for k, v in labels.items() if k not in dropped}


@torch.no_grad()
def encode_captions(text_encoder, tokenizer, captions: list[str], device: torch.device) -> torch.Tensor:
    """Frozen text-encoder outputs ``(len(captions), 77, D)`` of the captions."""
    tokens = tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    return text_encoder(tokens.to(device))[0].float()


class CaptionBank:
    """Frozen text-encoder outputs of captions, each distinct caption encoded once.

    Call it with ``B`` captions to get their ``(B, 77, D)`` float32 states on ``device``.
    """

    def __init__(self, text_encoder, tokenizer, device: torch.device):
        self.text_encoder, self.tokenizer, self.device = text_encoder, tokenizer, device
        self.states: dict[str, torch.Tensor] = {}

    def __call__(self, captions: list[str]) -> torch.Tensor:
        new = sorted(set(captions) - set(self.states))
        if new:
            encoded = encode_captions(self.text_encoder, self.tokenizer, new, self.device)
            self.states.update(zip(new, encoded, strict=True))
        return torch.stack([self.states[text] for text in captions])


def batch_captions(items: torch.Tensor, corpus, config: PretrainConfig, generator: torch.Generator) -> list[str]:
    """The captions of training items ``items`` (crop ``i // 2`` with mirrors): caption dropout to ``""`` first, then
    per item its labels' caption (``captions="labels"``, with label dropout) or the colour/grey caption."""
    crops = (items // 2 if config.flip else items).tolist()
    dropped = (torch.rand(len(crops), generator=generator) < config.caption_dropout).tolist()
    texts = []
    for crop, drop in zip(crops, dropped, strict=True):
        if config.captions == "labels":
            text = caption(drop_labels(corpus.labels[crop], config.label_dropout, generator))
        else:
            text = config.gray_caption if corpus.gray[crop] else config.color_caption
        texts.append("" if drop else text)
    return texts
