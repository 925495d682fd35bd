"""Known-answer tests of the linkability metrics on hand-built 2-D/3-D unit vectors."""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pytest
import torch

from iddm.evaluate.metrics import (
    InsufficientImpostorPairsWarning,
    binomial_standard_error,
    calibrate_threshold,
    chance_level,
    cosine_to_reference,
    face_detection_failure_rate,
    genuine_scores,
    identity_centroids,
    identity_score_matching,
    impostor_scores,
    match_at_far,
    match_rate_at_threshold,
    min_impostor_pairs,
    rank1_targeted,
    rank1_targeted_hits,
    rank1_untargeted,
    rank1_untargeted_hits,
    rank_last_hits,
    standard_error_of_mean,
    targeted_chance_level,
    user_ranks,
    user_zscores,
)


def unit(degrees: float) -> list[float]:
    """A 2-D unit vector at ``degrees`` from the x axis."""
    r = math.radians(degrees)
    return [math.cos(r), math.sin(r)]


E1, E2, E3 = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]


# ---------------------------------------------------------------- ISM, FDFR


def test_ism_uses_the_normalized_reference_mean():
    reference = [unit(0), unit(90)]  # mean direction: 45 degrees
    probes = [unit(45), unit(135)]  # cosines 1 and 0
    assert identity_score_matching(probes, reference) == pytest.approx(0.5)
    assert cosine_to_reference(probes, reference) == pytest.approx([1.0, 0.0])
    assert cosine_to_reference(probes, reference, mode="max") == pytest.approx([math.cos(math.radians(45))] * 2)


def test_ism_normalizes_inputs_and_accepts_torch():
    reference = torch.tensor([[3.0, 0.0, 0.0]])
    probes = torch.tensor([[0.0, 2.0, 0.0], [5.0, 0.0, 0.0]], dtype=torch.float16)
    assert identity_score_matching(probes, reference) == pytest.approx(0.5)


def test_ism_without_probes_is_nan_and_errors_are_explicit():
    assert math.isnan(identity_score_matching(np.zeros((0, 3)), [E1]))
    assert math.isnan(identity_score_matching([], [E1]))
    with pytest.raises(ValueError, match="reference_emb is empty"):
        identity_score_matching([E1], np.zeros((0, 3)))
    with pytest.raises(ValueError, match="dimensions differ"):
        identity_score_matching([E1], [unit(0)])
    with pytest.raises(ValueError, match="all-zero"):
        identity_score_matching([[0.0, 0.0, 0.0]], [E1])
    with pytest.raises(ValueError, match="nan or inf"):
        identity_score_matching([[np.nan, 0.0, 0.0]], [E1])
    with pytest.raises(ValueError, match=r"x\[None\]"):
        identity_score_matching(E1, [E1])
    with pytest.raises(ValueError, match="zero vector"):
        identity_score_matching([E1], [E1, [-1.0, 0.0, 0.0]])


def test_fdfr():
    assert face_detection_failure_rate([True, False, True, True]) == pytest.approx(0.25)
    assert face_detection_failure_rate(np.array([1, 1, 0, 0])) == pytest.approx(0.5)
    assert face_detection_failure_rate([True]) == 0.0
    assert math.isnan(face_detection_failure_rate([]))
    with pytest.raises(ValueError, match="booleans"):
        face_detection_failure_rate([0.5, 1.0])


# ---------------------------------------------------------------- R1-U


def test_rank1_untargeted_centroid_vs_nearest_image():
    # User "u": photos at 0 and 90 degrees (template at 45). Distractor "d": one photo at 60 degrees.
    gallery = [unit(0), unit(90), unit(60)]
    labels = ["u", "u", "d"]
    probes = [unit(10), unit(50), unit(80)]
    # Centroids: u at 45, d at 60. Probe 10 -> u (35 vs 50 deg), 50 -> u (5 vs 10), 80 -> d (35 vs 20).
    assert rank1_untargeted_hits(probes, gallery, labels, "u").tolist() == [True, True, False]
    assert rank1_untargeted(probes, gallery, labels, "u") == pytest.approx(2 / 3)
    # Nearest image: 10 -> photo 0 (u), 50 -> photo 60 (d), 80 -> photo 90 (u).
    assert rank1_untargeted_hits(probes, gallery, labels, "u", mode="nearest").tolist() == [True, False, True]
    assert chance_level(labels) == 0.5
    assert chance_level([1, 2, 3, 3]) == pytest.approx(1 / 3)


def test_rank1_untargeted_ties_count_as_hits_and_edge_cases():
    gallery, labels = [E1, E2], [0, 1]
    probe = [[1.0, 1.0, 0.0]]  # equidistant from both identities
    assert rank1_untargeted(probe, gallery, labels, 0) == 1.0
    assert rank1_untargeted(probe, gallery, labels, 1) == 1.0
    assert math.isnan(rank1_untargeted(np.zeros((0, 3)), gallery, labels, 0))
    with pytest.raises(ValueError, match="at least one\\s+distractor"):
        rank1_untargeted([E1], [E1, E2], ["u", "u"], "u")
    with pytest.raises(ValueError, match="not among the gallery labels"):
        rank1_untargeted([E1], gallery, labels, 7)
    with pytest.raises(ValueError, match="one label per embedding"):
        rank1_untargeted([E1], gallery, [0], 0)
    with pytest.raises(ValueError, match="'centroid' or 'nearest'"):
        rank1_untargeted([E1], gallery, labels, 0, mode="mean")
    with pytest.raises(ValueError, match="empty"):
        chance_level([])


# ---------------------------------------------------------------- R1-T


def test_rank1_targeted():
    pool = [unit(0), unit(90), unit(180)]  # the user's generation is the one at 90 degrees
    is_user = np.array([False, True, False])
    queries = [unit(80), unit(30), unit(135)]  # top-1: 90 (hit), 0 (miss), tie 90/180 (hit)
    assert rank1_targeted_hits(queries, pool, is_user).tolist() == [True, False, True]
    assert rank1_targeted(queries, pool, is_user) == pytest.approx(2 / 3)
    assert targeted_chance_level(is_user) == pytest.approx(1 / 3)
    assert math.isnan(rank1_targeted(np.zeros((0, 2)), pool, is_user))
    with pytest.raises(ValueError, match="both the user's generations and other"):
        rank1_targeted(queries, pool, [True, True, True])
    with pytest.raises(ValueError, match="both the user's generations and other"):
        rank1_targeted(queries, pool, [False, False, False])
    with pytest.raises(ValueError, match="boolean"):
        rank1_targeted(queries, pool, [0, 1, 0])


# ---------------------------------------------------------------- impostor scores, thresholds


def test_identity_centroids():
    identities, centroids = identity_centroids([unit(0), unit(90), E1[:2]], ["b", "b", "a"])
    assert identities.tolist() == ["a", "b"]
    assert centroids == pytest.approx(np.array([unit(0), unit(45)]))


def test_impostor_and_genuine_scores():
    emb = [E1, E1, E2, [0.0, 0.6, 0.8]]
    labels = ["a", "a", "b", "c"]
    # Cross-identity pairs in row-major order: (0,2) (0,3) (1,2) (1,3) (2,3).
    assert impostor_scores(emb, labels) == pytest.approx([0.0, 0.0, 0.0, 0.0, 0.6])
    assert genuine_scores(emb, labels) == pytest.approx([1.0])
    # Template mode: each image against each other identity's template (a: E1, b: E2, c: (0, .6, .8)).
    assert sorted(impostor_scores(emb, labels, mode="mean")) == pytest.approx([0, 0, 0, 0, 0, 0, 0.6, 0.6])
    assert sorted(impostor_scores(emb, labels, mode="max")) == pytest.approx([0, 0, 0, 0, 0, 0, 0.6, 0.6])
    with pytest.raises(ValueError, match="at least two identities"):
        impostor_scores([E1, E2], ["a", "a"])
    with pytest.raises(ValueError, match="at least two identities"):
        impostor_scores([E1, E2], ["a", "a"], mode="mean")
    with pytest.raises(ValueError, match="'pair', 'mean' or 'max'"):
        impostor_scores(emb, labels, mode="centroid")


def test_min_impostor_pairs():
    assert min_impostor_pairs(1e-2) == 100
    assert min_impostor_pairs(1e-3) == 1000
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        min_impostor_pairs(0.0)


def test_calibrate_threshold_known_answer():
    scores = np.arange(100) / 100.0  # 0.00 .. 0.99, shuffled order must not matter
    np.random.default_rng(0).shuffle(scores)
    # FAR 0.02 on 100 scores: at most 2 accepted -> just above the 3rd highest (0.97).
    threshold = calibrate_threshold(scores, 0.02)
    assert threshold == np.nextafter(0.97, 1.0)
    assert (scores >= threshold).sum() == 2
    # FAR 0.01: one accepted -> just above 0.98.
    assert calibrate_threshold(scores, 0.01) == np.nextafter(0.98, 1.0)


def test_calibrate_threshold_rejects_all_tied_scores():
    scores = [0.1] * 95 + [0.5] * 5  # k = 2 allowed, but five scores tie at 0.5
    threshold = calibrate_threshold(scores, 0.02)
    assert threshold == np.nextafter(0.5, 1.0)
    assert (np.array(scores) >= threshold).sum() == 0  # achieved FAR 0 <= 0.02


def test_calibrate_threshold_with_too_few_pairs_is_flagged():
    scores = [0.1, 0.3, 0.2]
    with pytest.warns(InsufficientImpostorPairsWarning, match="need >= 1000"):
        threshold = calibrate_threshold(scores, 1e-3)
    assert threshold == np.nextafter(0.3, 1.0)
    with pytest.raises(ValueError, match="need >= 100"):
        calibrate_threshold(scores, 1e-2, strict=True)
    with pytest.raises(ValueError, match="empty"):
        calibrate_threshold([], 1e-2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        calibrate_threshold(np.zeros(1000), 1e-3)  # exactly enough: no warning


def test_match_rate_at_threshold():
    reference = [unit(0), unit(90)]  # template at 45 degrees
    probes = [unit(45), unit(90), unit(180)]  # template cosines 1, .707, -.707; max cosines 1/.707, 1, 0
    assert match_rate_at_threshold(probes, reference, 0.7) == pytest.approx(2 / 3)
    assert match_rate_at_threshold(probes, reference, 0.8) == pytest.approx(1 / 3)
    assert match_rate_at_threshold(probes, reference, 0.8, mode="max") == pytest.approx(1 / 3)
    assert match_rate_at_threshold(probes, reference, 0.7, mode="max") == pytest.approx(2 / 3)
    assert match_rate_at_threshold([[1.0, 0.0], [0.0, 1.0]], [[2.0, 0.0]], 1.0) == 0.5  # >= is inclusive
    assert math.isnan(match_rate_at_threshold([], reference, 0.5))
    with pytest.raises(ValueError, match="'mean' or 'max'"):
        match_rate_at_threshold(probes, reference, 0.5, mode="centroid")


def test_match_at_far_end_to_end():
    # 30 identities x 5 photos on distinct axes of R^30: all impostor cosines are 0, so with enough pairs
    # the threshold is just above 0 and probes at angle < 90 degrees from the user's axis match.
    emb = np.repeat(np.eye(30), 5, axis=0)
    labels = np.repeat(np.arange(30), 5)
    reference = np.eye(30)[:1]
    probes = np.zeros((4, 30))
    probes[:, 0] = [1.0, 0.5, 0.0, -1.0]
    probes[:, 1] = [0.0, 0.5, 1.0, 0.0]
    results = match_at_far(probes, reference, emb, labels, mode="mean", impostor_mode="pair")
    assert set(results) == {1e-2, 1e-3}
    for far, result in results.items():
        assert result.reliable and result.n_impostor == math.comb(150, 2) - 30 * math.comb(5, 2)
        assert result.far == far and result.threshold == np.nextafter(0.0, 1.0)
        assert result.match_rate == pytest.approx(0.5)
    assert dataclasses.asdict(results[1e-2])["match_rate"] == pytest.approx(0.5)
    # Template calibration: 150 images x 29 other identities = 4350 scores, still enough for 1e-3.
    assert match_at_far(probes, reference, emb, labels)[1e-3].n_impostor == 150 * 29


def test_match_at_far_flags_too_few_impostors():
    emb, labels = [E1, E2, E3], ["a", "b", "c"]  # 3 pairs, all at cosine 0
    with pytest.warns(InsufficientImpostorPairsWarning, match="understates"):
        results = match_at_far([E1], [E1], emb, labels, fars=(1e-2,), impostor_mode="pair")
    assert not results[1e-2].reliable
    assert results[1e-2].threshold == np.nextafter(0.0, 1.0)
    assert results[1e-2].match_rate == 1.0


def test_vectorized_metrics_agree_with_loops():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(40, 8))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = rng.integers(0, 5, size=40)
    probes = rng.normal(size=(12, 8))
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    identities = np.unique(labels)
    centroids = {i: emb[labels == i].mean(0) / np.linalg.norm(emb[labels == i].mean(0)) for i in identities}
    expected_centroid = [max(identities, key=lambda i: p @ centroids[i]) == 3 for p in probes]
    expected_nearest = [labels[np.argmax(emb @ p)] == 3 for p in probes]
    assert rank1_untargeted_hits(probes, emb, labels, 3).tolist() == expected_centroid
    assert rank1_untargeted_hits(probes, emb, labels, 3, mode="nearest").tolist() == expected_nearest
    pairs = [emb[i] @ emb[j] for i in range(40) for j in range(i + 1, 40) if labels[i] != labels[j]]
    assert impostor_scores(emb, labels) == pytest.approx(pairs)
    template = [emb[n] @ centroids[i] for n in range(40) for i in identities if i != labels[n]]
    assert impostor_scores(emb, labels, mode="mean") == pytest.approx(template)
    best = [
        max(emb[n] @ emb[m] for m in np.flatnonzero(labels == i))
        for n in range(40)
        for i in identities
        if i != labels[n]
    ]
    assert impostor_scores(emb, labels, mode="max") == pytest.approx(best)
    is_user = labels == 2
    expected_targeted = [bool(is_user[np.argmax(emb @ q)]) for q in probes]
    assert rank1_targeted_hits(probes, emb, is_user).tolist() == expected_targeted
    threshold, allowed = calibrate_threshold(pairs, 0.01), math.floor(0.01 * len(pairs))
    assert np.sum(np.array(pairs) >= threshold) <= allowed < np.sum(np.array(pairs) >= np.nextafter(threshold, -1.0))


# ---------------------------------------------------------------- over-decoupling: rank-last, rank, z-score

OVER = ["user", "user", "a", "b", "c"]  # gallery labels: the user has two photos, three strangers one each


def _gallery() -> np.ndarray:
    return np.array([unit(0), unit(10), unit(90), unit(120), unit(150)])  # user template at 5 degrees


def test_rank_last_fires_when_the_user_is_the_least_similar():
    probes = [unit(-175), unit(-170)]  # opposite the user: a, b, c are all closer
    assert rank_last_hits(probes, _gallery(), OVER, "user").tolist() == [True, True]
    assert user_ranks(probes, _gallery(), OVER, "user").tolist() == [4, 4]
    assert (user_zscores(probes, _gallery(), OVER, "user") < -1).all()
    assert not rank1_untargeted_hits(probes, _gallery(), OVER, "user").any()


def test_rank_of_a_linkable_probe_and_ties_favour_the_attacker():
    z = user_zscores([unit(5)], _gallery(), OVER, "user")
    others = np.cos(np.radians([85.0, 115.0, 145.0]))
    assert z[0] == pytest.approx((1.0 - others.mean()) / others.std())
    assert user_ranks([unit(5)], _gallery(), OVER, "user").tolist() == [1]
    compass = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])  # user, a, b, c: exact ties below
    labels = ["user", "a", "b", "c"]
    between_user_and_a = [[1.0, 1.0]]
    assert user_ranks(between_user_and_a, compass, labels, "user").tolist() == [1]
    assert rank1_untargeted_hits(between_user_and_a, compass, labels, "user").tolist() == [True]
    far_from_user_and_a = [[-1.0, -1.0]]
    assert rank_last_hits(far_from_user_and_a, compass, labels, "user").tolist() == [True]
    assert user_ranks(far_from_user_and_a, compass, labels, "user").tolist() == [3]  # b and c are closer


def test_zscore_is_undefined_with_one_stranger_and_errors():
    two = np.array([unit(0), unit(90)])
    assert math.isnan(user_zscores([unit(10)], two, ["user", "a"], "user")[0])
    with pytest.raises(ValueError, match="not among the gallery labels"):
        user_ranks([unit(0)], two, ["a", "b"], "user")
    with pytest.raises(ValueError, match="at least one distractor"):
        rank_last_hits([unit(0)], two, ["user", "user"], "user")
    assert rank_last_hits(np.zeros((0, 2)), two, ["user", "a"], "user").shape == (0,)


def test_standard_errors():
    assert binomial_standard_error(0.25, 12) == pytest.approx(0.125)
    assert binomial_standard_error(0.5, 1) == pytest.approx(0.5)
    assert math.isnan(binomial_standard_error(0.5, 0))
    with pytest.raises(ValueError, match="chance"):
        binomial_standard_error(1.5, 4)
    assert standard_error_of_mean([1.0, 3.0]) == pytest.approx(1.0)
    assert standard_error_of_mean([1.0, np.nan, 3.0]) == pytest.approx(1.0)
    assert math.isnan(standard_error_of_mean([2.0]))
