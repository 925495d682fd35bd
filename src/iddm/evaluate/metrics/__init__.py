"""Linkability metrics of the evaluation protocol (DESIGN.md §3), as small pure functions.

Every function takes face embeddings as ``(N, D)`` arrays (numpy or torch; torch tensors are
detached and copied to the CPU) and computes in numpy ``float64``, so results do not depend on the
device or dtype the embeddings came from. Rows are L2-normalized inside, so a "cosine" here is the
exact cosine similarity in ``[-1, 1]`` even for embeddings that are not quite unit length (fp16, int8
models); an all-zero or non-finite row is an error.

Conventions shared by all functions:

* The caller drops probes whose face was not detected (they count in :func:`face_detection_failure_rate`
  instead). A rate over zero probes is ``nan``, meaning "undefined: no generated image had a detected
  face" -- report it next to an FDFR of 1.0, never as 0.
* Ties are resolved in the attacker's favour (a tie between the user and another identity is a hit),
  so the linkability reported is an upper bound on the exact-arithmetic value: conservative for
  privacy claims.
* Identity centroids ("templates") are ``normalize(mean_i normalize(e_i))``, as the identity anchor
  ``e_k`` of DESIGN.md §2.

Sources: ISM and FDFR as in Anti-DreamBooth (Van Le et al., ICCV 2023); rank-1 identification and
verification at a false accept rate as in the FR literature (e.g. Grother et al., NIST FRVT; IJB-C,
Maze et al., 2018).
"""

from iddm.evaluate.metrics.common import (
    binomial_standard_error,
    chance_level,
    identity_centroids,
    standard_error_of_mean,
)
from iddm.evaluate.metrics.identification import (
    rank1_untargeted,
    rank1_untargeted_hits,
    rank_last_hits,
    user_ranks,
    user_zscores,
)
from iddm.evaluate.metrics.similarity import cosine_to_reference, face_detection_failure_rate, identity_score_matching
from iddm.evaluate.metrics.targeted import rank1_targeted, rank1_targeted_hits, targeted_chance_level
from iddm.evaluate.metrics.verification import (
    InsufficientImpostorPairsWarning,
    MatchAtFar,
    calibrate_threshold,
    genuine_scores,
    impostor_scores,
    match_at_far,
    match_rate_at_threshold,
    min_impostor_pairs,
)

__all__ = [
    "InsufficientImpostorPairsWarning",
    "MatchAtFar",
    "calibrate_threshold",
    "chance_level",
    "cosine_to_reference",
    "face_detection_failure_rate",
    "genuine_scores",
    "identity_centroids",
    "identity_score_matching",
    "impostor_scores",
    "match_at_far",
    "match_rate_at_threshold",
    "min_impostor_pairs",
    "rank1_targeted",
    "rank1_targeted_hits",
    "rank1_untargeted",
    "rank1_untargeted_hits",
    "rank_last_hits",
    "standard_error_of_mean",
    "binomial_standard_error",
    "targeted_chance_level",
    "user_ranks",
    "user_zscores",
]
