"""The question-drift test on real embeddings: the offline model embeds questions written here,
about the project's own topics (in distribution) and about anything else (out of corpus).

Each pool is embedded once for the module; the rates below are what docs/rag.md reports."""

from itertools import product

import numpy as np
import pytest

from llmops.rag.question_drift import (
    QuestionDriftError,
    drift_map,
    furthest_questions,
    permutation_splits,
    question_drift,
)

PROJECT_TOPICS = [
    "training the tabular classifier",
    "the eval gate",
    "the model registry",
    "promoting a challenger to champion",
    "the data drift monitor",
    "serving the classifier with BentoML",
    "building the RAG index",
    "prompt versions",
    "LoRA fine-tuning of the LLM",
    "the golden set",
    "the inference log",
    "rolling back a release",
    "hybrid retrieval with BM25",
]
PROJECT_TEMPLATES = [
    "How do I configure {}?",
    "What happens when {} fails?",
    "Where does the flow store the output of {}?",
    "Which settings control {}?",
    "How can I test {} on my laptop?",
    "Why is {} slow on a large dataset?",
    "Can {} run on a GPU with Metaflow?",
    "What are the defaults of {}?",
]
OTHER_TOPICS = [
    "baking sourdough bread",
    "a marathon training plan",
    "visiting Kyoto in autumn",
    "the fall of the Roman Empire",
    "growing tomatoes on a balcony",
    "the offside rule in football",
    "making fresh pasta",
    "hiking in the Alps",
]
OTHER_TEMPLATES = [
    "What should I know before {}?",
    "What is the most common mistake with {}?",
    "How long does {} usually take?",
    "Can you recommend a good book about {}?",
    "Is {} suitable for children?",
    "What does a beginner get wrong about {}?",
]
SEEDS = range(20)
REFERENCE_SIZE, WINDOW_SIZE = 40, 30


def questions(templates: list[str], topics: list[str]) -> list[str]:
    return [template.format(topic) for template, topic in product(templates, topics)]


@pytest.fixture(scope="module")
def project_questions() -> list[str]:
    return questions(PROJECT_TEMPLATES, PROJECT_TOPICS)


@pytest.fixture(scope="module")
def other_questions() -> list[str]:
    return questions(OTHER_TEMPLATES, OTHER_TOPICS)


@pytest.fixture(scope="module")
def project_vectors(embedder, project_questions) -> np.ndarray:
    return embedder.embed(project_questions)  # (104, 384)


@pytest.fixture(scope="module")
def other_vectors(embedder, other_questions) -> np.ndarray:
    return embedder.embed(other_questions)  # (48, 384)


def split_project(project_vectors: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A reference and a window drawn from the project pool, disjoint."""
    order = np.random.default_rng(seed).permutation(len(project_vectors))
    reference = project_vectors[order[:REFERENCE_SIZE]]
    window = project_vectors[order[REFERENCE_SIZE : REFERENCE_SIZE + WINDOW_SIZE]]
    return reference, window


def test_false_alarms_at_most_one_in_twenty(project_vectors):
    p_values = []
    for seed in SEEDS:
        reference, window = split_project(project_vectors, seed)
        p_values.append(question_drift(reference, window, seed=seed).p_value)
    alarms = sum(p < 0.01 for p in p_values)
    assert alarms <= 1, f"{alarms} false alarms in 20, p-values {sorted(p_values)}"


def test_out_of_corpus_windows_are_detected_nineteen_in_twenty(project_vectors, other_vectors):
    detected = 0
    for seed in SEEDS:
        reference, _ = split_project(project_vectors, seed)
        rows = np.random.default_rng(seed).choice(len(other_vectors), WINDOW_SIZE, replace=False)
        result = question_drift(reference, other_vectors[rows], seed=seed)
        detected += result.drifted
        assert result.verdict == ("drift" if result.drifted else "no drift")
    assert detected >= 19, f"{detected} detections in 20"


def brute_force_p_value(pooled: np.ndarray, n: int, splits: np.ndarray) -> float:
    """The same test written out one pair at a time: kernel, median bandwidth, unbiased MMD²."""
    total = len(pooled)
    unit = [row / np.linalg.norm(row) for row in pooled]
    squared = [[float(np.sum((a - b) ** 2)) for b in unit] for a in unit]
    bandwidth = float(np.median([squared[i][j] for i in range(total) for j in range(i + 1, total)]))
    kernel = [[np.exp(-squared[i][j] / bandwidth) for j in range(total)] for i in range(total)]

    def mmd2(first: list[int], second: list[int]) -> float:
        def mean(a: list[int], b: list[int], distinct: bool) -> float:
            values = [kernel[i][j] for i in a for j in b if not (distinct and i == j)]
            return sum(values) / len(values)

        return mean(first, first, True) + mean(second, second, True) - 2 * mean(first, second, False)

    observed = mmd2(list(range(n)), list(range(n, total)))
    at_least = 0
    for split in splits:
        first = [i for i in range(total) if split[i]]
        second = [i for i in range(total) if not split[i]]
        at_least += mmd2(first, second) >= observed - 1e-12
    return (1 + at_least) / (1 + len(splits))


def test_permutation_p_value_equals_a_brute_force_computation(project_vectors, other_vectors):
    reference = project_vectors[:7]
    window = np.concatenate([project_vectors[50:53], other_vectors[:3]])  # a partly drifted window
    result = question_drift(reference, window, permutations=200, min_questions=5, seed=3)
    splits = permutation_splits(13, 7, 200, seed=3)
    assert (splits.sum(axis=1) == 7).all()
    assert result.p_value == pytest.approx(
        brute_force_p_value(np.concatenate([reference, window]), 7, splits)
    )
    assert 0.005 < result.p_value < 1.0  # neither the floor nor the ceiling: the comparison is not trivial


def test_identical_samples_give_a_p_value_near_one(project_vectors):
    sample = project_vectors[:30]
    result = question_drift(sample, sample.copy())
    assert result.p_value > 0.99
    assert result.verdict == "no drift" and not result.drifted


def test_the_p_value_is_seeded(project_vectors):
    reference, window = split_project(project_vectors, 0)
    first = question_drift(reference, window, seed=7)
    assert question_drift(reference, window, seed=7) == first


def test_too_small_a_window_is_not_enough_traffic(project_vectors, other_vectors):
    result = question_drift(project_vectors[:40], other_vectors[:19])  # far away, but only 19
    assert result.verdict == "not enough traffic"
    assert result.drifted is False and result.p_value is None and result.statistic is None
    assert result.window_size == 19 and result.min_questions == 20
    assert len(result.furthest) == 5  # the card can still name them
    short = question_drift(project_vectors[:10], project_vectors[40:70])
    assert short.verdict == "not enough reference" and short.drifted is False


def test_the_furthest_questions_of_a_mixed_window_are_the_out_of_corpus_ones(
    project_vectors, other_vectors, project_questions, other_questions
):
    reference, window = split_project(project_vectors, 1)
    order = np.random.default_rng(1).permutation(len(project_vectors))  # split_project's draw
    in_texts = [project_questions[i] for i in order[REFERENCE_SIZE : REFERENCE_SIZE + 15]]
    mixed = np.concatenate([window[:15], other_vectors[[0, 9, 18, 27, 36]]])  # (20, 384)
    mixed_texts = in_texts + [other_questions[i] for i in (0, 9, 18, 27, 36)]
    result = question_drift(reference, mixed, questions=mixed_texts)
    assert sorted(far.index for far in result.furthest) == [15, 16, 17, 18, 19]
    assert {far.question for far in result.furthest} == set(mixed_texts[15:])
    distances = [far.distance for far in result.furthest]
    assert distances == sorted(distances, reverse=True)
    assert all(far.distance == pytest.approx(1 - far.similarity) for far in result.furthest)
    # the same ranking without the test around it
    assert furthest_questions(reference, mixed, top=5) == [
        f.model_copy(update={"question": None}) for f in result.furthest
    ]


def test_the_drift_map_separates_an_out_of_corpus_window(project_vectors, other_vectors):
    points = drift_map(project_vectors[:40], other_vectors[:30])
    assert len(points) == 70
    assert [p.set for p in points] == ["reference"] * 40 + ["window"] * 30
    assert [p.index for p in points[40:]] == list(range(30))
    reference_x = np.array([p.x for p in points if p.set == "reference"])
    window_x = np.array([p.x for p in points if p.set == "window"])
    # the first component is the direction between the two sets: they fall on either side
    assert reference_x.max() < window_x.min() or window_x.max() < reference_x.min()
    assert drift_map(project_vectors[:40], other_vectors[:30]) == points


def test_embeddings_of_two_models_are_refused(project_vectors):
    with pytest.raises(QuestionDriftError, match="window: 8-d"):
        question_drift(project_vectors[:30], np.ones((30, 8)))
    with pytest.raises(QuestionDriftError, match="2-D"):
        question_drift(project_vectors[0], project_vectors[:30])
