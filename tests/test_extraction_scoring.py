"""The extraction benchmark's scoring (benchmarks/extraction.py), without a model: the dataset loads
and its gold answers score full marks, and each normalisation rule holds."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def extraction():
    sys.path.insert(0, str(BENCHMARKS))  # for its `from _plotting import pyplot`
    try:
        spec = importlib.util.spec_from_file_location("extraction_benchmark", BENCHMARKS / "extraction.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # pydantic resolves the models' annotations through it
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def test_dataset_is_labelled_and_gold_scores_full_marks(extraction):
    from structgen.types import as_output_type

    cases = extraction.load_cases()
    assert len(cases) >= 60
    assert len({c["id"] for c in cases}) == len(cases)
    families = {c["family"] for c in cases}
    assert {"names", "numbers", "enums", "dates", "lists", "nested", "optional"} <= families
    assert any(value is None for c in cases for value in extraction.gold_fields(c["gold"]).values())
    for case in cases:
        schema = as_output_type(extraction.MODELS[case["model"]]).schema
        outcome = extraction.judge(case, schema, case["gold"])
        assert outcome["valid"] and outcome["right"] == outcome["total"], case["id"]


def test_normalisation_rules(extraction):
    score = extraction.score
    gold = {"name": "Ada  Lovelace", "n": 4, "tags": ["a", "b"], "hq": {"city": "Lyon"}, "email": None}
    answer = {"name": " ada lovelace", "n": 4.0, "tags": ["B", "a"], "hq": {"city": "LYON"}}
    assert score(gold, answer, True) == dict.fromkeys(["name", "n", "tags", "hq.city", "email"], True)
    wrong = {"name": "Ada", "n": "4", "tags": ["a", "b", "b"], "hq": "Lyon", "email": "x@example.com"}
    assert not any(score(gold, wrong, True).values())
    assert score({"n": 1}, {"n": True}, True) == {"n": False}  # a boolean is not a number
    assert not any(score(gold, answer, False).values())  # an invalid answer has every field wrong


def test_invalid_and_missing_answers_score_nothing(extraction):
    case = {"id": "t", "gold": {"sentiment": "positive", "topic": "price"}}
    schema = {"type": "object", "properties": {"sentiment": {"enum": ["positive", "negative"]},
                                               "topic": {"type": "string"}},
              "required": ["sentiment", "topic"]}
    invalid = extraction.judge(case, schema, {"sentiment": "Positive", "topic": "price"})
    assert (invalid["parsed"], invalid["valid"], invalid["right"]) == (True, False, 0)
    assert invalid["right_as_written"] == 2  # reported beside, never counted
    missing = extraction.judge(case, schema, None)
    assert (missing["parsed"], missing["right"], missing["total"]) == (False, 0, 2)


def test_first_json_object(extraction):
    read = extraction.first_json_object
    assert read('Sure! ```json\n{"a": [1, {"b": 2}]}\n``` and {"c": 3}') == {"a": [1, {"b": 2}]}
    assert read('{broken {"a": 1}') == {"a": 1}
    assert read("[1, 2]") is None and read("no json here") is None and read('{"a": ') is None


def test_bootstrap_interval_brackets_the_estimate(extraction):
    per_case = [(1, 2), (2, 2), (0, 2), (2, 2)] * 5
    low, high = extraction.bootstrap_interval(per_case)
    assert low <= 25 / 40 <= high
    assert extraction.bootstrap_interval([(2, 2)] * 10) == (1.0, 1.0)
