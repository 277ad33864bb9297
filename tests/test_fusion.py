"""Score fusion: interpolation and RRF on hand-computed examples, tie order, the alpha fit
(global and per task), fusion.json round trips, and the held-out validation split."""
from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from multitask_retriever.rerank.fusion import (
    FUSION_NAME,
    Fusion,
    FusionQuery,
    evaluate,
    fit_alpha,
    interpolate,
    minmax,
    ranks,
    rrf,
    split_validation,
)


# --------------------------------------------------------------------------- arithmetic
def test_interpolation_weights_min_max_normalised_scores():
    retriever = [0.9, 0.7, 0.5]  # normalised: 1, 1/2, 0
    reranker = [-2.0, -1.0, -4.0]  # normalised: 2/3, 1, 0
    # alpha 0.25: 0.25 * 2/3 + 0.75 * 1 = 11/12; 0.25 * 1 + 0.75 * 1/2 = 5/8; 0
    assert interpolate(retriever, reranker, 0.25) == pytest.approx([11 / 12, 5 / 8, 0.0])
    # alpha 0.75: 0.75 * 2/3 + 0.25 * 1 = 3/4; 0.75 * 1 + 0.25 * 1/2 = 7/8; 0
    assert interpolate(retriever, reranker, 0.75) == pytest.approx([3 / 4, 7 / 8, 0.0])
    assert Fusion("interpolate", alpha=0.75).order(retriever, reranker) == [1, 0, 2]


def test_the_ends_of_alpha_are_the_retriever_and_the_reranker():
    assert interpolate([3.0, 2.0, 1.0], [0.0, 5.0, 10.0], 0.0) == pytest.approx([1.0, 0.5, 0.0])
    assert interpolate([3.0, 2.0, 1.0], [0.0, 5.0, 10.0], 1.0) == pytest.approx([0.0, 0.5, 1.0])


def test_a_list_of_equal_scores_normalises_to_zeros():
    assert minmax([2.0, 2.0]) == [0.0, 0.0]
    assert minmax([]) == []


def test_rrf_adds_reciprocal_ranks():
    # k = 1: 1/2 + 1/4, 1/3 + 1/2, 1/4 + 1/3
    assert rrf([1, 2, 3], [3, 1, 2], k=1) == pytest.approx([0.75, 5 / 6, 7 / 12])
    assert rrf([1], [2]) == pytest.approx([1 / 61 + 1 / 62])
    with pytest.raises(ValueError, match="1-based"):
        rrf([0], [1])


def test_rrf_fusion_ranks_both_score_lists():
    fusion = Fusion("rrf", rrf_k=1)
    # retriever ranks 1, 2, 3; reranker ranks 3, 1, 2
    assert fusion.scores([0.9, 0.5, 0.1], [-3.0, -1.0, -2.0]) == pytest.approx([0.75, 5 / 6, 7 / 12])
    assert fusion.order([0.9, 0.5, 0.1], [-3.0, -1.0, -2.0]) == [1, 0, 2]


def test_equal_scores_rank_in_input_order():
    assert ranks([1.0, 1.0, 2.0]) == [2, 3, 1]


@pytest.mark.parametrize(("fusion", "retriever", "reranker"), [
    (Fusion("interpolate", alpha=0.5), [4.0, 3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0, 4.0]),  # all fuse to 1/2
    (Fusion("rrf"), [2.0, 1.0], [1.0, 2.0]),  # ranks (1, 2) and (2, 1)
    (Fusion("none"), [3.0, 2.0, 1.0], [0.5, 0.5, 0.5]),
])
def test_ties_keep_retrieval_order(fusion, retriever, reranker):
    fused = fusion.scores(retriever, reranker)
    assert len(set(fused)) == 1
    assert fusion.order(retriever, reranker) == list(range(len(retriever)))


def test_none_is_the_rerankers_order():
    assert Fusion().order([3.0, 2.0, 1.0], [0.1, 0.3, 0.2]) == [1, 2, 0]


def test_unequal_lists_and_bad_settings_are_refused():
    with pytest.raises(ValueError, match="3 retriever values but 2 reranker values"):
        interpolate([1.0, 2.0, 3.0], [1.0, 2.0], 0.5)
    with pytest.raises(ValueError, match="one of none, interpolate, rrf"):
        Fusion("sum")
    with pytest.raises(ValueError, match=r"task_alphas\[nq\] must be in \[0, 1\]"):
        Fusion("interpolate", task_alphas={"nq": 1.5})


# --------------------------------------------------------------------------- fitting
def _needs_reranker(task: str = "nq") -> FusionQuery:
    """Gold candidate 1 is first once alpha > 1/4: 2/3 (1 - a) + a > 1 - a."""
    return FusionQuery(task, [3.0, 2.0, 0.0], [0.0, 1.0, 0.0], [False, True, False], ["A", "B", "C"])


def _needs_retriever(task: str = "fever") -> FusionQuery:
    """Gold candidate 0 stays first while alpha < 7/20: 1 - a > 6/13 (1 - a) + a."""
    return FusionQuery(task, [13.0, 6.0, 0.0], [0.0, 1.0, 0.0], [True, False, False], ["A", "B", "C"])


# at either end of alpha one query has its gold page first and the other second: R-precision
# (R = 1) (1 + 0) / 2, MRR (1 + 1/2) / 2
@pytest.mark.parametrize(("metric", "at_the_ends"), [("r-precision", 0.5), ("mrr", 0.75)])
def test_the_fit_picks_the_only_alpha_that_serves_both_queries(metric, at_the_ends):
    fusion = fit_alpha([_needs_reranker(), _needs_retriever()], metric=metric)
    assert fusion.method == "interpolate"
    assert fusion.alpha == 0.3
    assert fusion.fit["global"]["value"] == 1.0
    assert fusion.fit["global"]["values"]["0.0"] == at_the_ends
    assert fusion.fit["global"]["values"]["1.0"] == at_the_ends


def test_metrics_count_pages_not_passages():
    # two passages of page A ahead of gold page B: B is the second page, not the third passage
    query = FusionQuery("nq", [3.0, 2.0, 1.0], [0.0, 0.0, 0.0], [False, False, True], ["A", "A", "B"])
    assert evaluate([query], Fusion("interpolate", alpha=0.0), "mrr") == 0.5
    assert evaluate([query], Fusion("interpolate", alpha=0.0), "r-precision") == 0.0


def test_per_task_alphas_with_fallback_for_small_tasks():
    queries = ([_needs_reranker("nq")] * 3 + [_needs_retriever("fever")] * 3 + [_needs_reranker("trex")]
               + [FusionQuery("trex", [1.0, 0.0], [0.0, 1.0], [False, False])] * 5)  # no gold: left out
    fusion = fit_alpha(queries, per_task=True, min_task_queries=3)
    assert fusion.alpha == 0.3  # all 7 usable queries: only 0.3 serves both kinds
    assert fusion.task_alphas == {"nq": 0.3, "fever": 0.0}  # the first alpha that serves each task
    assert fusion.alpha_for("trex") == 0.3
    assert fusion.fit["tasks"]["trex"] == {"alpha": 0.3, "queries": 1, "fallback": True}
    assert fusion.fit["global"]["queries"] == 7


def test_the_fit_needs_a_gold_candidate_and_a_valid_grid():
    with pytest.raises(ValueError, match="none of the 1 validation queries has a gold candidate"):
        fit_alpha([FusionQuery("nq", [1.0], [1.0], [False])])
    with pytest.raises(ValueError, match="alpha grid"):
        fit_alpha([_needs_reranker()], grid=[0.5, 2.0])
    with pytest.raises(ValueError, match="unequal lengths"):
        FusionQuery("nq", [1.0, 2.0], [1.0], [True, False])


def test_save_and_load_round_trip(tmp_path):
    fusion = fit_alpha([_needs_reranker("nq")] * 2 + [_needs_retriever("fever")], per_task=True, min_task_queries=2)
    path = fusion.save(tmp_path / "reranker")
    assert path == tmp_path / "reranker" / FUSION_NAME
    assert Fusion.load(tmp_path / "reranker") == fusion
    assert [p.name for p in (tmp_path / "reranker").iterdir()] == [FUSION_NAME]


def test_load_names_the_file_of_a_bad_fusion_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="no fusion.json"):
        Fusion.load(tmp_path)
    (tmp_path / FUSION_NAME).write_text('{"method": "interpolate", "alpha": 0.5, "beta": 1}')
    with pytest.raises(ValueError, match=r"fusion.json: unknown fusion fields \['beta'\]"):
        Fusion.load(tmp_path)
    (tmp_path / FUSION_NAME).write_text('{"method": "interpolate",\n "alpha": 2}')
    with pytest.raises(ValueError, match=r"fusion.json: fusion alpha must be in \[0, 1\]"):
        Fusion.load(tmp_path)
    (tmp_path / FUSION_NAME).write_text('{"method":\n oops}')
    with pytest.raises(ValueError, match="fusion.json:2: invalid JSON"):
        Fusion.load(tmp_path)


# --------------------------------------------------------------------------- validation split
def _examples(n: int) -> list[SimpleNamespace]:
    return [SimpleNamespace(id=f"q{i}") for i in range(n)]


def test_the_split_is_disjoint_complete_and_keeps_input_order():
    examples = _examples(200)
    train, validation = split_validation(examples, 0.2, seed=1)
    assert len(validation) == 40 and len(train) == 160
    assert {e.id for e in train}.isdisjoint(e.id for e in validation)
    assert sorted(train + validation, key=examples.index) == examples
    assert train == sorted(train, key=examples.index) and validation == sorted(validation, key=examples.index)


def test_the_split_depends_on_ids_and_seed_only():
    examples = _examples(100)
    _, validation = split_validation(examples, 0.3, seed=1)
    shuffled = examples[:]
    random.Random(0).shuffle(shuffled)
    _, again = split_validation(shuffled, 0.3, seed=1)
    assert {e.id for e in again} == {e.id for e in validation}
    _, other_seed = split_validation(examples, 0.3, seed=2)
    assert {e.id for e in other_seed} != {e.id for e in validation}


def test_examples_sharing_an_id_stay_together_and_qid_is_the_id_of_rerank_examples():
    examples = [SimpleNamespace(qid=f"q{i // 2}") for i in range(20)]  # each id twice
    train, validation = split_validation(examples, 0.5)
    assert len(validation) == 10
    assert {e.qid for e in train}.isdisjoint(e.qid for e in validation)


def test_a_minimum_raises_a_small_task_s_validation_part_up_to_half_of_it():
    assert len(split_validation(_examples(127), 0.1, minimum=50)[1]) == 50  # 13 without it
    assert len(split_validation(_examples(1000), 0.1, minimum=50)[1]) == 100  # the fraction is larger
    assert len(split_validation(_examples(60), 0.1, minimum=50)[1]) == 30  # never more than half
    assert split_validation(_examples(60), 0.0, minimum=50) == (_examples(60), [])  # no hold-out asked for
    _, small = split_validation(_examples(127), 0.1, seed=3)
    _, raised = split_validation(_examples(127), 0.1, seed=3, minimum=50)
    assert {e.id for e in small} < {e.id for e in raised}  # the same hash order, only longer
    with pytest.raises(ValueError, match="validation minimum must be >= 0"):
        split_validation(_examples(5), 0.1, minimum=-1)


def test_split_fraction_ends_and_bad_fractions():
    examples = _examples(5)
    assert split_validation(examples, 0.0) == (examples, [])
    assert split_validation(examples, 1.0) == ([], examples)
    with pytest.raises(ValueError, match=r"validation fraction must be in \[0, 1\]"):
        split_validation(examples, 1.5)
