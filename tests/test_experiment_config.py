"""`ExperimentConfig`'s `train:` (TrainConfig fields) and `rerank:` (RerankTrainConfig fields)
sections: the experiment's own defaults, the earlier flat spellings still loading alike, and
every committed config giving the stage keys its earlier spelling gave."""
from __future__ import annotations

import dataclasses
from operator import attrgetter
from pathlib import Path

import pytest

from multitask_retriever.cli import build_parser
from multitask_retriever.config import config_from_args, load_config_file, unmoved_fields
from multitask_retriever.experiment import ExperimentConfig, RerankSection, TrainSection
from multitask_retriever.experiment.builders import (cross_encoder_train_config, llm_reranker_key,
                                                     llm_reranker_train_config, train_config, train_stage_key)
from multitask_retriever.experiment.cache import stage_key
from multitask_retriever.experiment.config import MOVED, RERANK_FIELDS, TRAIN_FIELDS, IndexSection
from multitask_retriever.rerank.train import RerankTrainConfig
from multitask_retriever.specialization import TacoConfig
from multitask_retriever.trainer import TrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "scripts" / "configs"

OLD = {"steps": 30, "lr": 1e-4, "negative_sampling": "top", "taco": {"beta": 0.5}, "taco_tau": 3.0,
       "reranker_steps": 5, "reranker_lr": 0.01, "reranker_batch_size": 2, "rerank_k": 7}
NEW = {"train": {"steps": 30, "lr": 1e-4, "negative_sampling": "top", "taco": {"beta": 0.5, "tau": 3.0}},
       "rerank": {"steps": 5, "lr": 0.01, "batch_size": 2}, "rerank_k": 7}


def test_the_sections_default_to_the_librarys_but_for_the_minilm_learning_rate_and_temperature():
    train, rerank = TrainConfig(), RerankTrainConfig()
    same = {p.rpartition(".")[2]: attrgetter(p)(train) for p in TRAIN_FIELDS if p not in ("optim.lr", "temperature")}
    assert TrainSection() == TrainSection(**same)
    assert (TrainSection().lr, TrainSection().temperature) == (3e-5, 0.05)
    assert RerankSection() == RerankSection(**{p.rpartition(".")[2]: attrgetter(p)(rerank) for p in RERANK_FIELDS})


def test_old_flat_keys_and_new_sections_give_equal_configs():
    assert config_from_args(ExperimentConfig, None, OLD) == config_from_args(ExperimentConfig, None, NEW) == \
        ExperimentConfig(train=TrainSection(steps=30, lr=1e-4, negative_sampling="top",
                                            taco=TacoConfig(beta=0.5, tau=3.0)),
                         rerank=RerankSection(steps=5, lr=0.01, batch_size=2), rerank_k=7)


def test_each_old_key_is_one_deprecation_line_naming_its_new_place(caplog):
    config_from_args(ExperimentConfig, None, [{"steps": 30, "reranker_lr": 0.01}, {"steps": 40}])
    assert [r.getMessage() for r in caplog.records] == [
        "config key 'steps' is deprecated: write it as train.steps",
        "config key 'reranker_lr' is deprecated: write it as rerank.lr"]


def test_old_and_new_flags_give_equal_configs():
    parser = build_parser()

    def config(*flags: str) -> ExperimentConfig:
        return config_from_args(ExperimentConfig, parser.parse_args(["benchmark-quality", "D", "--out", "r.json",
                                                                     *flags]), data_dir="D")

    assert config("--steps", "3", "--taco-beta", "0.5", "--reranker-steps", "2", "--rerank-k", "4") == \
        config("--train-steps", "3", "--train-taco-beta", "0.5", "--rerank-steps", "2", "--rerank-k", "4")


def test_a_section_value_out_of_range_is_refused_naming_the_field():
    with pytest.raises(ValueError, match="^steps must be >= 1, got 0"):
        config_from_args(ExperimentConfig, None, {"train": {"steps": 0}})
    with pytest.raises(ValueError, match="unknown RerankSection field 'loss'"):
        config_from_args(ExperimentConfig, None, {"rerank": {"loss": "kl"}})


def _committed() -> list[str]:
    return sorted(p.stem for p in CONFIGS.glob("*.yaml") if p.stem != "train-kilt-taco")  # that one is mtr train's


def test_the_committed_configs_use_no_old_key():
    for name in _committed():
        assert not set(load_config_file(CONFIGS / f"{name}.yaml")) & set(MOVED), name


#: per committed config (alone, and after cpu.yaml): the keys of a taco training stage, an
#: LLM reranker stage, a cross-encoder's training config and every other field, as the flat
#: spelling of these files gave them before the sections
KEYS = {
    "cpu": ["22d7818d7639622a", "eaa81789e5338353", "33830a9d2f45bff7", "a9b928a064f6418f"],
    "quality-realkilt": ["82d2c95a52843283", "28a805a9ee9de195", "c70d711e0ab6d254", "3c4b78f2ff4237e7"],
    "cpu+quality-realkilt": ["3c848734ba48a79a", "28a805a9ee9de195", "c70d711e0ab6d254", "0abdc9a4aeedd2ad"],
    "quality-realkilt-slice": ["0977582434c80b60", "2858e583489126cd", "c70d711e0ab6d254", "48a2cc12f30ae703"],
    "cpu+quality-realkilt-slice": ["4a7ba0aa94423d49", "2858e583489126cd", "c70d711e0ab6d254", "2522f5f76915184f"],
    # the quickstart's TACO trains without task prompts and its cross-encoder is LoRA at lr 1e-3 (both chosen
    # on validation), both in bfloat16 where native, TACO's model stored in float16
    "quickstart": ["18656da71fa517d3", "1e17a4e6a3ff2b18", "848ff57c1be635ed", "43e4e0d4582c2170"],
    "cpu+quickstart": ["18656da71fa517d3", "61723c90e204748c", "848ff57c1be635ed", "0e412e55499680b5"],
    "quickstart-all": ["682d212caa4e021a", "546dfff78e987b52", "0bfb0acbecc0fcbe", "9d28cb2ff9b66ca8"],
    "cpu+quickstart-all": ["8c79915a14bd2477", "eaa81789e5338353", "33830a9d2f45bff7", "a9b928a064f6418f"],
    "quickstart-mini": ["4a382165d2e5de3f", "2a1bebfef7204cf3", "369906a82d13ae7d", "a8b58e0092499540"],
    "cpu+quickstart-mini": ["c984be5111ab1bc9", "2a1bebfef7204cf3", "ef76c6c0b4e8ded9", "5ac6921bf784a716"],
    "quickstart-real": ["0977582434c80b60", "248849ee0d22372b", "0bfb0acbecc0fcbe", "9e5a4a13537197a8"],
    "cpu+quickstart-real": ["4a7ba0aa94423d49", "dce5d688af4f1820", "33830a9d2f45bff7", "4d6d432c97f9d57b"],
    "rerank-realkilt": ["82d2c95a52843283", "cdc084531a89fcc8", "a5d1af8627bc0fea", "e3dea7aae045ad4c"],
    "cpu+rerank-realkilt": ["3c848734ba48a79a", "fb967ede8e473af8", "b51c8ecddcb65d17", "6d176cb48d974bf9"],
    "llm-realkilt": ["82d2c95a52843283", "d3507126330b7bca", "bfddb2917b010fe3", "a769d4096a9374a4"],
    "cpu+llm-realkilt": ["3c848734ba48a79a", "d3507126330b7bca", "c70d711e0ab6d254", "9794deaa3d9bbcab"],
    "rerank-realkilt-gpu": ["fcb66b78275abe55", "1a8605665d358628", "81652e9eecdc359c", "3806f1c7bbe25e58"],
    "cpu+rerank-realkilt-gpu": ["15cfca0bdd694679", "4d7427f87b89f833", "2892a4c744c31355", "403fdf50c2b23290"],
    "rerankers-realkilt-slice": ["eab446609c5ad913", "dd2098ecbf482993", "4a05924e7571dffb", "9de629206082821a"],
    "cpu+rerankers-realkilt-slice": ["22d7818d7639622a", "dd2098ecbf482993", "4a05924e7571dffb", "9de629206082821a"],
    # the TACO protocol configs train in auto precision (bfloat16 where native)
    "taco-protocol-realkilt2": ["620ddda9e6da0571", "546dfff78e987b52", "0bfb0acbecc0fcbe", "1ec5f472532dfb0f"],
    "cpu+taco-protocol-realkilt2": ["620ddda9e6da0571", "eaa81789e5338353", "33830a9d2f45bff7", "bcc862ddf25a96c5"],
    "taco-protocol-realkilt2-gpu": ["9a22b929a2b0434a", "546dfff78e987b52", "0bfb0acbecc0fcbe", "25345df2e924c57c"],
    "cpu+taco-protocol-realkilt2-gpu": ["9a22b929a2b0434a", "eaa81789e5338353", "33830a9d2f45bff7", "fd7b382aff71e936"],
    "taco-study-realkilt2": ["3983af237ec887ce", "546dfff78e987b52", "0bfb0acbecc0fcbe", "2ee549569c2eba3e"],
    "cpu+taco-study-realkilt2": ["3983af237ec887ce", "eaa81789e5338353", "33830a9d2f45bff7", "a75c1895155a50a0"],
    "taco-study-realkilt2-gpu": ["cb8c40cb8681bfcf", "546dfff78e987b52", "0bfb0acbecc0fcbe", "e4b6c1c719be5b14"],
    "cpu+taco-study-realkilt2-gpu": ["cb8c40cb8681bfcf", "eaa81789e5338353", "33830a9d2f45bff7", "5a8d3809c20638cb"],
}


def _keys(*names: str) -> list[str]:
    c = config_from_args(ExperimentConfig, None, [load_config_file(CONFIGS / f"{n}.yaml") for n in names],
                         data_dir="DATA")
    train = train_config(c, "taco", ["fever", "nq"], "START", "DATA", "PASSAGES", "EXAMPLES.jsonl", "OUT",
                         progress=False)
    llm = llm_reranker_train_config(c, "lce+ql", "OUT", progress=False)
    cross_encoder = cross_encoder_train_config(c, False, "OUT", progress=False)
    later = {"cross_encoder_options": {}, "index": dataclasses.asdict(IndexSection())}  # fields added since, at
    # their defaults (keyed only when set)
    rest = {k: v for k, v in dataclasses.asdict(c).items() if k not in ("train", "rerank") and later.get(k, k) != v}
    return [train_stage_key("EXKEY", train),
            llm_reranker_key("RKEY", "qpeft-a", "START", llm, c.max_train_queries, c.rerank_k),
            stage_key(train=unmoved_fields(cross_encoder)), stage_key(**rest)]


@pytest.mark.parametrize("name", _committed())
def test_each_committed_config_gives_the_keys_of_its_earlier_spelling(name):
    assert _keys(name) == KEYS[name]
    if name != "cpu":
        assert _keys("cpu", name) == KEYS[f"cpu+{name}"]
