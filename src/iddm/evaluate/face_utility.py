"""``utility.face``: the measures of :class:`iddm.evaluate.results.FaceUtility` for one set of avatars.

SER-FIQ and consistency (:mod:`iddm.evaluate.face_quality`), attribute agreement with the user's photos and colour
(:mod:`iddm.evaluate.attributes`), face-shape plausibility and the training photos' landmark displacement
(:mod:`iddm.evaluate.geometry`), the Fréchet distance and KID to the vanilla model's generations on TAEF2
features, and the KID to real faces on the same features. Images without a detected face are counted
(``num_faces`` against the number of images) and left out of the per-face measures; a measure over no face is
``None``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from iddm.evaluate import attributes, face_quality, geometry
from iddm.evaluate.quality import frechet_distance
from iddm.evaluate.results import FaceUtility
from iddm.faces import DetectedFace, detect_faces
from iddm.images import PhotoError, list_photos, load_photo
from iddm.run_layout import RunManifest, is_run_dir


def largest_face(image: np.ndarray) -> DetectedFace | None:
    """The largest face YuNet finds in ``image`` (``uint8`` RGB), or ``None``."""
    faces = detect_faces(image)
    return faces[0] if faces else None


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def user_photos(run_dir: str | Path | None) -> list[np.ndarray]:
    """The run's training photos as the user gave them (unreadable ones skipped); ``[]`` without a run."""
    if run_dir is None or not is_run_dir(run_dir):
        return []
    folder = Path(RunManifest.load(run_dir).photos)
    if not folder.is_dir():
        return []
    photos = []
    for path in list_photos(folder, min_photos=0):
        try:
            photos.append(load_photo(path))
        except PhotoError:
            continue
    return photos


def sface_consistency(images: Sequence[np.ndarray], faces: Sequence[DetectedFace | None]) -> float | None:
    """Mean pairwise SFace cosine among the detected faces (the model SER-FIQ uses)."""
    from iddm.faces import embed_photos

    embeddings = [e.numpy() for e in embed_photos(face_quality._sface(), images, faces) if e is not None]
    return face_quality.consistency(np.stack(embeddings)) if embeddings else None


def _photo_attributes(photos: Sequence[np.ndarray]) -> tuple[dict[str, np.ndarray], float | None]:
    faces = [largest_face(p) for p in photos]
    colour = float(np.mean([attributes.is_colour(p) for p in photos])) if photos else None
    return attributes.predict_faces(photos, faces), colour


def avatar_measures(
    images: Sequence[np.ndarray], photo_attributes: dict[str, np.ndarray] | None, colour_photos: float | None
) -> FaceUtility:
    """SER-FIQ, consistency, attribute agreement, colour and face shape of one set of avatars."""
    faces = [largest_face(image) for image in images]
    found = [face for face in faces if face is not None]
    notes = []
    if len(found) < len(images):
        notes.append(f"{len(images) - len(found)} of {len(images)} images without a detected face")
    agreement = None
    if photo_attributes is None:
        notes.append("no user photos (no run folder): attribute agreement undefined")
    else:
        agreement = attributes.attribute_agreement(photo_attributes, attributes.predict_faces(images, faces))
        if agreement is None:
            notes.append("no face among the user's photos or the avatars: attribute agreement undefined")
    shapes = geometry.shape_distances(images, faces)
    return FaceUtility(
        num_faces=len(found),
        serfiq=_mean(face_quality.serfiq_scores(images, faces)),
        consistency=sface_consistency(images, faces),
        attributes_photos=agreement.photos if agreement else {},
        attribute_agreement=agreement.agreement if agreement else {},
        colour_photos=colour_photos,
        colour_avatars=float(np.mean([attributes.is_colour(image) for image in images])) if images else None,
        shape_distance=float(shapes.mean()) if len(shapes) else None,
        notes=notes,
    )


def realism_to_vanilla(
    images: Sequence[np.ndarray], vanilla_images: Sequence[np.ndarray]
) -> tuple[float | None, float | None, list[str]]:
    """``(Fréchet distance, KID, notes)`` between the generations and vanilla's on TAEF2 features."""
    a, b = face_quality.realism_features(images), face_quality.realism_features(vanilla_images)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frechet = frechet_distance(a, b)
        kid = face_quality.kernel_inception_distance(a, b)
    return frechet, kid, [str(w.message) for w in caught]


def displacement(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[float | None, int]:
    """Landmark displacement (px per 64 px) of ``(clean crop, decoupled photo)`` pairs, and the pairs measured."""
    clean = [largest_face(a) for a, _ in pairs]
    decoupled = [largest_face(b) for _, b in pairs]
    return geometry.landmark_displacement(clean, decoupled, [a.shape[0] for a, _ in pairs])


def face_utility(
    images: Sequence[np.ndarray],
    run_dir: str | Path | None = None,
    vanilla_images: Sequence[np.ndarray] | None = None,
    pairs: Sequence[tuple[np.ndarray, np.ndarray]] = (),
) -> FaceUtility:
    """Every measure of :class:`FaceUtility` for the generations ``images`` (RGB ``uint8``).

    Args:
        run_dir: the run the images came from: its training photos are the user's photos of attribute agreement.
        vanilla_images: the vanilla model's generations (same prompts and seeds): Fréchet distance, KID, and
            ``vanilla`` (the same measures of them).
        pairs: ``(clean crop, decoupled photo)`` of the run's training photos (landmark displacement).
    """
    photos = user_photos(run_dir)
    photo_attributes, colour_photos = _photo_attributes(photos) if photos else (None, None)
    result = avatar_measures(images, photo_attributes, colour_photos)
    result.landmark_displacement, result.landmark_pairs = displacement(pairs) if pairs else (None, 0)
    if vanilla_images:
        result.vanilla = avatar_measures(vanilla_images, photo_attributes, colour_photos)
        result.frechet_to_vanilla, result.kid_to_vanilla, notes = realism_to_vanilla(images, vanilla_images)
        result.notes += notes
    return result


def real_face_features(photos: Sequence[np.ndarray], resolution: int, crop: str) -> np.ndarray:
    """TAEF2 realism features ``(N, 64)`` of the faces in ``photos`` (RGB ``uint8``), each cropped as training photos
    are (:func:`iddm.diffusion.data.crop_matrix`, ``crop`` ``"aligned"`` or ``"portrait"``); photos without one face
    are left out."""
    from iddm.diffusion.data import crop_matrix, warp_crop
    from iddm.faces import detect_single_face

    crops = []
    for photo in photos:
        try:
            face = detect_single_face(photo)
        except (PhotoError, ValueError):
            continue
        crops.append(warp_crop(photo, crop_matrix(face, resolution, crop), resolution))
    return face_quality.realism_features(crops)


def photos_of(paths: Sequence[Path]) -> list[np.ndarray]:
    """The readable photos among ``paths`` (RGB ``uint8``)."""
    photos = []
    for path in paths:
        try:
            photos.append(load_photo(path))
        except PhotoError:
            continue
    return photos


def kid_to_real(images: Sequence[np.ndarray], reference: np.ndarray) -> tuple[float | None, list[str]]:
    """``(KID, notes)`` between the generations and real faces' :func:`real_face_features` ``reference``.

    Unlike SER-FIQ, consistency or face shape it grows for painterly or caricatured avatars (measured on the
    128-px prior: docs/results/frontier_128_cfp.md); read it relative to the vanilla cell of the same person.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kid = face_quality.kernel_inception_distance(face_quality.realism_features(images), reference)
    return kid, [str(w.message) for w in caught]


def add_kid_to_real(
    face: FaceUtility,
    images: Sequence[np.ndarray],
    vanilla_images: Sequence[np.ndarray] | None,
    real_photos: Sequence[np.ndarray],
    crop: str,
) -> None:
    """Fill ``face.kid_to_real`` (and its vanilla's, given ``vanilla_images``) against the faces of ``real_photos``
    (photos of people, none of them the training photos), cropped as the run cropped its photos."""
    reference = real_face_features(real_photos, images[0].shape[0], crop)
    face.kid_to_real, notes = kid_to_real(images, reference)
    face.notes += [f"KID to real faces: {note}" for note in notes]
    if vanilla_images and face.vanilla is not None:
        face.vanilla.kid_to_real = kid_to_real(vanilla_images, reference)[0]
