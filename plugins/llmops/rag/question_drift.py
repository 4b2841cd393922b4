"""Question drift: do a window's questions come from the same distribution as the reference's?

The RAG/LLM monitor embeds a window of logged questions and a reference (the golden set's
questions plus the last window that passed) with the release's embedding model and calls
``question_drift(reference, window)``. The statistic is the unbiased MMD² of the two embedding
sets under an RBF kernel whose bandwidth is the median squared distance of the pooled sample
(the median heuristic), and its p-value comes from a permutation test: the pooled kernel matrix
is computed once and every permutation is read off it with matrix products, so 500 permutations
of 100 + 100 questions take milliseconds. Embedding is the caller's job: functions take arrays.

``drift_map`` projects both sets onto the pooled sample's first two principal components, the
points of the card's drift map.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel

from llmops.errors import LlmopsError

DEFAULT_ALPHA = 0.01
DEFAULT_PERMUTATIONS = 500
DEFAULT_MIN_QUESTIONS = 20
DEFAULT_TOP = 5
NEIGHBOURS = 5  # reference points a window question is compared with to call it far

Verdict = Literal["drift", "no drift", "not enough traffic", "not enough reference"]


class QuestionDriftError(LlmopsError, ValueError):
    """Embedding sets that cannot be compared; says which argument is wrong."""


class FarQuestion(BaseModel):
    """A window question and how close it comes to the reference: the mean cosine similarity to
    its nearest reference questions, and ``distance`` = 1 - that similarity."""

    index: int
    similarity: float
    distance: float
    question: str | None = None


class QuestionDrift(BaseModel):
    """The permutation test of a window's question embeddings against the reference's.

    ``drifted`` is ``p_value < alpha``, and never true without enough questions on both sides
    (``verdict`` then says which side is short, and ``statistic`` and ``p_value`` are None).
    ``furthest`` names the window questions furthest from the reference, largest distance first.
    """

    verdict: Verdict
    drifted: bool
    statistic: float | None
    p_value: float | None
    alpha: float
    permutations: int
    reference_size: int
    window_size: int
    min_questions: int
    bandwidth: float | None
    furthest: list[FarQuestion]


class MapPoint(BaseModel):
    """One question on the drift map: its position on the pooled sample's first two principal
    components, which set it belongs to, and its row in that set."""

    x: float
    y: float
    set: Literal["reference", "window"]
    index: int


def _as_embeddings(values: np.ndarray, name: str) -> np.ndarray:
    """``values`` as float64 rows of unit length (the embedder's are; a caller's may not be)."""
    array = np.asarray(values, dtype="float64")
    if array.ndim != 2:
        raise QuestionDriftError(
            f"{name}: expected a 2-D array (questions, dimensions), got shape {array.shape}"
        )
    if not np.all(np.isfinite(array)):
        raise QuestionDriftError(f"{name}: holds NaN or infinite values")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return array / np.where(norms > 0, norms, 1.0)


def _check_pair(reference: np.ndarray, window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ref = _as_embeddings(reference, "reference")
    win = _as_embeddings(window, "window")
    if ref.shape[1] != win.shape[1]:
        raise QuestionDriftError(
            f"window: {win.shape[1]}-d embeddings against a {ref.shape[1]}-d reference "
            "(embed both with the same model)"
        )
    return ref, win


def rbf_kernel(pooled: np.ndarray) -> tuple[np.ndarray, float]:
    """(kernel matrix (N, N), bandwidth) of unit rows: exp(-|a - b|² / bandwidth), the bandwidth
    being the median squared distance between distinct points (1 when they all coincide)."""
    gram = pooled @ pooled.T  # (N, N) cosine similarities
    squared = np.clip(2.0 - 2.0 * gram, 0.0, None)  # unit rows: |a - b|² = 2 - 2 a·b
    upper = squared[np.triu_indices(len(pooled), k=1)]
    bandwidth = float(np.median(upper)) if upper.size else 0.0
    if bandwidth <= 0.0:
        bandwidth = 1.0
    return np.exp(-squared / bandwidth), bandwidth


def mmd2_of_splits(kernel: np.ndarray, in_first: np.ndarray) -> np.ndarray:
    """Unbiased MMD² of each split of the pooled sample: ``in_first`` (P, N) is true where a point
    belongs to the first set. A split's within- and between-set kernel sums are quadratic forms of
    its indicator vector, so all P of them cost two (P, N) x (N, N) products instead of P
    submatrix copies."""
    off_diagonal = kernel - np.diag(np.diag(kernel))  # the unbiased estimate leaves out k(a, a)
    first = in_first.astype("float64")  # (P, N)
    second = 1.0 - first
    n = first.sum(axis=1)  # (P,)
    m = second.sum(axis=1)
    k_first = first @ off_diagonal  # (P, N)
    k_second = second @ off_diagonal
    within_first = np.einsum("pn,pn->p", k_first, first)
    within_second = np.einsum("pn,pn->p", k_second, second)
    between = np.einsum("pn,pn->p", k_first, second)
    return within_first / (n * (n - 1)) + within_second / (m * (m - 1)) - 2.0 * between / (n * m)


def permutation_splits(size: int, first: int, permutations: int, seed: int) -> np.ndarray:
    """(permutations, size) boolean splits: each row a uniform random choice of ``first`` points."""
    rng = np.random.default_rng(seed)
    order = rng.permuted(np.tile(np.arange(size), (permutations, 1)), axis=1)  # (P, N)
    splits = np.zeros((permutations, size), dtype=bool)
    np.put_along_axis(splits, order[:, :first], True, axis=1)
    return splits


def furthest_questions(
    reference: np.ndarray,
    window: np.ndarray,
    top: int = DEFAULT_TOP,
    questions: Sequence[str] | None = None,
) -> list[FarQuestion]:
    """The ``top`` window questions whose nearest reference questions are least similar, furthest
    first. A question's similarity is its mean cosine similarity to its ``NEIGHBOURS`` nearest
    reference questions: one near-duplicate in the reference is not enough to look at home."""
    ref, win = _check_pair(reference, window)
    return _furthest(ref, win, top, questions)


def _furthest(
    ref: np.ndarray, win: np.ndarray, top: int, questions: Sequence[str] | None
) -> list[FarQuestion]:
    if questions is not None and len(questions) != len(win):
        raise QuestionDriftError(f"questions: {len(questions)} texts for a window of {len(win)} embeddings")
    if len(ref) == 0 or len(win) == 0:
        return []
    similarity = win @ ref.T  # (m, n)
    k = min(NEIGHBOURS, len(ref))
    nearest = -np.partition(-similarity, k - 1, axis=1)[:, :k]  # (m, k), the k largest of each row
    closeness = nearest.mean(axis=1)  # (m,)
    order = np.argsort(closeness, kind="stable")[:top]
    return [
        FarQuestion(
            index=int(i),
            similarity=float(closeness[i]),
            distance=float(1.0 - closeness[i]),
            question=None if questions is None else questions[i],
        )
        for i in order
    ]


def question_drift(
    reference: np.ndarray,
    window: np.ndarray,
    *,
    alpha: float = DEFAULT_ALPHA,
    permutations: int = DEFAULT_PERMUTATIONS,
    min_questions: int = DEFAULT_MIN_QUESTIONS,
    top: int = DEFAULT_TOP,
    seed: int = 0,
    questions: Sequence[str] | None = None,
) -> QuestionDrift:
    """Test whether ``window`` (m, d) embeddings differ from ``reference`` (n, d) ones.

    Parameters
    ----------
    reference, window
        Question embeddings of one model, a row each (normalized here if they are not).
    alpha
        The window has drifted when the permutation p-value is below it.
    permutations
        Random splits of the pooled sample; the p-value is (1 + splits at least as far apart as
        the observed one) / (1 + permutations), so it is never below 1 / (1 + permutations).
    min_questions
        Fewer questions than this on either side give no verdict and no alarm.
    top
        How many of the furthest window questions to name.
    seed
        Seed of ``numpy.random.default_rng`` for the splits: the same inputs give the same p-value.
    questions
        The window's question texts, to name the furthest ones by text as well as by row.
    """
    if not 0.0 < alpha < 1.0:
        raise QuestionDriftError(f"alpha: must be between 0 and 1, got {alpha}")
    if permutations < 1:
        raise QuestionDriftError(f"permutations: must be at least 1, got {permutations}")
    if min_questions < 2:
        raise QuestionDriftError(
            f"min_questions: must be at least 2 (the unbiased MMD² needs pairs), got {min_questions}"
        )
    ref, win = _check_pair(reference, window)
    n, m = len(ref), len(win)
    furthest = _furthest(ref, win, top, questions)
    shared = dict(
        alpha=alpha,
        permutations=permutations,
        reference_size=n,
        window_size=m,
        min_questions=min_questions,
        furthest=furthest,
    )
    if m < min_questions or n < min_questions:
        verdict: Verdict = "not enough traffic" if m < min_questions else "not enough reference"
        return QuestionDrift(
            verdict=verdict, drifted=False, statistic=None, p_value=None, bandwidth=None, **shared
        )

    kernel, bandwidth = rbf_kernel(np.concatenate([ref, win]))  # (n + m, n + m)
    observed = float(mmd2_of_splits(kernel, np.arange(n + m)[None, :] < n)[0])
    null = mmd2_of_splits(kernel, permutation_splits(n + m, n, permutations, seed))  # (P,)
    # a small tolerance: a split equal to the observed one must count even after rounding
    p_value = float((1 + np.sum(null >= observed - 1e-12)) / (1 + permutations))
    drifted = p_value < alpha
    return QuestionDrift(
        verdict="drift" if drifted else "no drift",
        drifted=drifted,
        statistic=observed,
        p_value=p_value,
        bandwidth=bandwidth,
        **shared,
    )


def drift_map(reference: np.ndarray, window: np.ndarray) -> list[MapPoint]:
    """Both sets on the pooled sample's first two principal components (SVD of the centered
    pooled embeddings), reference points first. Each axis's sign is fixed so that its largest
    loading is positive, so the same inputs always draw the same map."""
    ref, win = _check_pair(reference, window)
    pooled = np.concatenate([ref, win])  # (n + m, d)
    if len(pooled) == 0:
        return []
    centered = pooled - pooled.mean(axis=0)
    _, _, components = np.linalg.svd(centered, full_matrices=False)  # (min(N, d), d)
    axes = components[:2]
    signs = np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(axis=1)])
    coords = centered @ (axes * np.where(signs == 0, 1.0, signs)[:, None]).T  # (N, <= 2)
    if coords.shape[1] < 2:  # a single point or a rank-1 sample has no second axis
        coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
    labels = ["reference"] * len(ref) + ["window"] * len(win)
    rows = list(range(len(ref))) + list(range(len(win)))
    return [
        MapPoint(x=float(x), y=float(y), set=label, index=row)
        for (x, y), label, row in zip(coords, labels, rows, strict=True)
    ]
