"""The correctness oracle (issue 6): MaskBench files and hypothesis-jsonschema properties.

MaskBench files
---------------
Each ``*.json`` file of ``--maskbench-data`` (default ``tests/fixtures/maskbench``: 49 files from
``shared/jsonschemabench/dev``, chosen across sources and keywords) runs through the MaskBench
procedure (``shared/jsonschemabench/README.md``): compile the schema with
``structgen.compile_constraint(schema, tokenizer, whitespace="flexible")``; serialise each test
instance with ``json.dumps(data, indent=None, ensure_ascii=False)``, tokenise it without special
tokens and walk it token by token (a token outside the mask is a rejection; one inside it that
``advance`` refuses is a bug and fails the test); at the end the instance is accepted iff the
matcher is accepting (and then, and only then, the EOS token must be allowed). Per file the
outcome is one of

    passing > validation error (a valid instance rejected) > compile error (a typed
    StructgenError from compile_constraint)

and ``invalidation error`` (an invalid instance accepted), which always fails. Any other
exception is a bug and fails the test. The outcome is compared with
``tests/baseline/maskbench_baseline.json`` ({file name: outcome}): worse than the baseline fails,
better passes and is listed under "MaskBench oracle" in the terminal summary (raise the
baseline then); a file missing from the baseline (``--maskbench-data`` elsewhere) only has to be
free of invalidation errors and untyped exceptions.

Options (tests/conftest.py)::

    --maskbench-data DIR            MaskBench files to run (default tests/fixtures/maskbench)
    --maskbench-tokenizer NAME      smollm2 (default) or llama3; llama3 compares against
                                    tests/baseline/maskbench_baseline_llama3.json
    --maskbench-timeout SECONDS     compile timeout per schema (default 20)
    --update-baseline               write this run's outcomes into the baseline file

Regenerate the baseline (after an engine change that improves outcomes)::

    python -m pytest tests/test_oracle.py -k maskbench --update-baseline
    python -m pytest tests/test_oracle.py -k maskbench --update-baseline --maskbench-tokenizer llama3

(set ``STRUCTGEN_CACHE`` to reuse compiled constraints between runs). Files that run are merged
into the existing baseline (files no longer in the data directory are dropped); an invalidation
error is never written. Review the diff before committing it: the
baseline is what CI holds the engine to.

Property tests (hypothesis-jsonschema)
--------------------------------------
Over ``PROPERTY_SCHEMAS``: (a) every instance ``hypothesis_jsonschema.from_schema`` generates is
accepted compactly serialised (``separators=(",", ":")``) with ``whitespace="compact"``, with
default separators with ``"spaced"``, with ``indent=2`` with ``"indented"``, and both of the
latter with ``"flexible"``; (b) anything the engine accepts validates: random token walks (an
index into ``allowed_token_ids()`` drawn at each step, stopping at an accepting state when drawn
to, under ``matcher(max_tokens=WALK_TOKENS)`` so the walk always ends accepting) decode to JSON
that validates with ``jsonschema`` and its format checker, and in a bounded mode is laid out as
json.dumps writes it there (``tests/layouts.py``).

Restrictions of the strategies in (a), each a departure documented in docs/schema-support.md
(the assertion itself is never weakened):

- Property order: instances are re-serialised with keys in the schema's ``properties`` order
  (structgen writes properties in that order).
- No extra properties: every object schema has ``additionalProperties: false`` (structgen writes
  only the declared properties).
- Digit caps: integers on an unbounded side have at most 16 digits; numbers are written without
  exponent with at most 15 digits in all (the integer part's too) and 16 fraction digits, and
  bounded numbers are never ``-0.0`` (instances outside are filtered out; the number schemas are
  bounded).
- Integers are written as integers: a float such as ``1.0`` under ``"type": "integer"`` is
  filtered out (jsonschema counts it as an integer; structgen writes ``1``).
- No ``\\u`` surrogate escapes: the default-separator text is written with ``ensure_ascii=True``
  unless the instance holds characters beyond U+FFFF, which are then written raw
  (``ensure_ascii=False``); the compact and indented texts always use ``ensure_ascii=False``.
- One spelling under ``enum``, ``const`` and ``pattern``: where a schema has any of them, the
  default-separator text is written with ``ensure_ascii=False`` too (``"é"``, not ``"\\u00e9"``).
- Numbers past the digit caps are rounded to 6 decimals (and dropped if the rounded instance no
  longer validates or still does not fit).
- Texts the tokenizer cannot spell are skipped (``assume``): SmolLM2's vocabulary has no token
  for the bytes 0xF1 and 0xF2, so its tokenizer silently drops code points U+40000-U+BFFFF.
- Patterns use ECMA-262 anchors: a string that only matches because Python's ``$`` also matches
  before a final newline is filtered out (it is invalid for ECMA-262 validators).
"""

from __future__ import annotations

import copy
import json
import math
import re
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema
from layouts import BOUNDED, dumps, relaid

import structgen
from structgen.errors import StructgenError
from structgen.schema import WHITESPACE_MODES
from structgen.schema.numbers import DEFAULT_MAX_DIGITS

# passing > validation error > compile error; an invalidation error always fails.
RANK = {"passing": 2, "validation error": 1, "compile error": 0}

# MaskBench files on which the engine is known to be wrong: {file name: reason}. Each is marked
# xfail(strict=True), so CI stays green and turns red the moment the fix lands (then remove it).
KNOWN_BUGS: dict[str, str] = {}


def _data_dir(config) -> Path:
    return Path(config.getoption("--maskbench-data"))


def pytest_generate_tests(metafunc):
    if "maskbench_file" not in metafunc.fixturenames:
        return
    files = sorted(_data_dir(metafunc.config).glob("*.json"))
    params = [pytest.param(path, id=path.name,
                           marks=[pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[path.name])]
                           if path.name in KNOWN_BUGS else [])
              for path in files]
    if not params:
        params = [pytest.param(None, id="no-files",
                               marks=pytest.mark.skip(reason=f"no *.json in {_data_dir(metafunc.config)}"))]
    metafunc.parametrize("maskbench_file", params)


@pytest.fixture(scope="session")
def tokenizer(request):
    name = request.config.getoption("--maskbench-tokenizer")
    return request.getfixturevalue(f"{name}_tokenizer")


@pytest.fixture(scope="session")
def baseline(request) -> dict:
    from conftest import maskbench_baseline_path

    path = maskbench_baseline_path(request.config)
    return json.loads(path.read_text()) if path.exists() else {}


# --- the MaskBench procedure ------------------------------------------------------------------


def bit(bitmask: np.ndarray, token: int) -> bool:
    return bool((int(bitmask[token >> 5]) >> (token & 31)) & 1)


def walk(constraint, tokenizer, ids: list[int]) -> tuple[bool, int | None, str | None]:
    """(accepted, index of the rejected token or None, inconsistency or None) for ``ids``.

    A token outside the mask is a rejection (MaskBench checks the mask), even where ``advance``
    would take it: llguidance narrows forced text to one tokenisation of its own. A token in the
    mask that ``advance`` refuses is an inconsistency (decoding would stall): a bug.
    """
    vocab = max(int(getattr(constraint, "vocab_size", 0) or 0), len(tokenizer))
    bitmask = np.zeros((vocab + 31) // 32, dtype=np.int32)
    matcher = constraint.matcher()
    for position, token in enumerate(ids):
        matcher.fill_bitmask(bitmask)
        if not bit(bitmask, token):
            return False, position, None
        if not matcher.advance(token):
            return False, position, (f"token {token} ({tokenizer.decode([token])!r}) is in the "
                                     "mask but advance() refused it")
    accepting = matcher.is_accepting()
    matcher.fill_bitmask(bitmask)
    eos = constraint.eos_token_id
    if bit(bitmask, eos) != accepting:
        return accepting, None, f"is_accepting() is {accepting} but EOS in the mask is {not accepting}"
    return accepting, None, None


def run_maskbench_file(path: Path, tokenizer, timeout: float) -> dict:
    doc = json.loads(path.read_text())
    try:
        constraint = structgen.compile_constraint(doc["schema"], tokenizer, whitespace="flexible",
                                                  timeout=timeout)
    except StructgenError as error:  # typed: the engine says it cannot
        return {"outcome": "compile error", "engine": None,
                "detail": f"{type(error).__name__}: {error}", "failures": []}
    failures = []
    for number, test in enumerate(doc.get("tests", [])):
        text = json.dumps(test["data"], indent=None, ensure_ascii=False)
        ids = tokenizer.encode(text, add_special_tokens=False)
        accepted, rejected_at, inconsistency = walk(constraint, tokenizer, ids)
        if inconsistency:
            failures.append({"kind": "inconsistent", "test": number, "detail": inconsistency,
                             "text": text[:300]})
        if accepted != bool(test["valid"]):
            prefix = tokenizer.decode(ids[:rejected_at]) if rejected_at is not None else text
            failures.append({
                "kind": "validation error" if test["valid"] else "invalidation error",
                "test": number, "rejected_at_token": rejected_at,
                "accepted_prefix": prefix[-120:], "description": test.get("description", "")[:120],
                "text": text[:300]})
    kinds = {failure["kind"] for failure in failures}
    outcome = ("invalidation error" if "invalidation error" in kinds else
               "validation error" if "validation error" in kinds else "passing")
    return {"outcome": outcome, "engine": getattr(constraint, "engine", "?"),
            "detail": getattr(constraint, "fallback_reason", None), "failures": failures}


def test_maskbench_file(maskbench_file, tokenizer, baseline, maskbench_report, request):
    config = request.config
    result = run_maskbench_file(maskbench_file, tokenizer, config.getoption("--maskbench-timeout"))
    name, outcome = maskbench_file.name, result["outcome"]
    maskbench_report["outcomes"][name] = outcome
    summary = (f"{name}: {outcome} (engine {result['engine']}"
               + (f"; {result['detail'][:200]}" if result["detail"] else "") + ")\n"
               + "\n".join(json.dumps(failure, ensure_ascii=False) for failure in result["failures"]))
    inconsistent = [f for f in result["failures"] if f["kind"] == "inconsistent"]
    assert not inconsistent, f"mask and matcher disagree: {summary}"
    assert outcome != "invalidation error", f"an invalid instance was accepted: {summary}"
    if config.getoption("--update-baseline"):
        return
    expected = baseline.get(name)
    if expected is None:
        maskbench_report["new"].append(name)
        return
    if RANK[outcome] < RANK[expected]:
        maskbench_report["regressed"].append((name, expected, outcome))
        pytest.fail(f"regression against the baseline ({expected}): {summary}")
    if RANK[outcome] > RANK[expected]:
        maskbench_report["improved"].append((name, expected, outcome))


# --- hypothesis-jsonschema properties ---------------------------------------------------------

def _hypothesis_jsonschema_compat() -> None:
    """hypothesis-jsonschema 0.23.1 draws object keys with ``cu.many(...).more()``, which newer
    Hypothesis replaced by ``with many(...) as e: for _ in e:``; give it the old interface."""
    import hypothesis.internal.conjecture.utils as cu
    from hypothesis_jsonschema import _from_schema

    if hasattr(cu.many, "more"):
        return

    class OldStyleMany:
        def __init__(self, data, **kwargs):
            self._many = cu.many(data, **kwargs)
            self._many.__enter__()
            self._steps = iter(self._many)

        def more(self) -> bool:
            if next(self._steps, StopIteration) is StopIteration:
                self._many.__exit__(None, None, None)
                return False
            return True

        def reject(self, why=None) -> None:
            self._many.reject(why)

    _from_schema.cu = SimpleNamespace(many=OldStyleMany)


_hypothesis_jsonschema_compat()

PROPERTY_SCHEMAS = {
    "object_required_optional": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 8},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "active": {"type": "boolean"},
            "born": {"type": "string", "format": "date"},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    },
    "nested_arrays": {
        "type": "array",
        "items": {"type": "array", "items": {"type": "integer", "minimum": -50, "maximum": 50},
                  "minItems": 1, "maxItems": 3},
        "minItems": 1,
        "maxItems": 4,
    },
    "enum": {"enum": ["red", "green", "blue", 42, None, True, "é \"quoted\""]},
    "string_lengths": {"type": "string", "minLength": 2, "maxLength": 6},
    "string_pattern": {"type": "string", "pattern": "^[a-z]{1,6}-[0-9]{2,4}$"},
    "integers": {
        "type": "object",
        "properties": {"small": {"type": "integer", "minimum": -1000, "maximum": 100000},
                       "positive": {"type": "integer", "exclusiveMinimum": 0},
                       "any": {"type": "integer"}},
        "required": ["small", "positive", "any"],
        "additionalProperties": False,
    },
    "numbers": {
        "type": "object",
        "properties": {"ratio": {"type": "number", "minimum": 0, "maximum": 1},
                       "temperature": {"type": "number", "minimum": -100, "maximum": 100}},
        "required": ["ratio", "temperature"],
        "additionalProperties": False,
    },
    "any_of": {"anyOf": [{"type": "string", "maxLength": 5},
                         {"type": "integer", "minimum": 0, "maximum": 999},
                         {"type": "array", "items": {"type": "boolean"}, "maxItems": 3}]},
    "nullable": {
        "type": "object",
        "properties": {"note": {"type": ["string", "null"], "maxLength": 4},
                       "count": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 99},
                                           {"type": "null"}]}},
        "required": ["note"],
        "additionalProperties": False,
    },
    "refs_and_one_of": {
        "$defs": {
            "point": {"type": "object",
                      "properties": {"x": {"type": "integer", "minimum": -99, "maximum": 99},
                                     "y": {"type": "integer", "minimum": -99, "maximum": 99}},
                      "required": ["x", "y"], "additionalProperties": False},
            "shape": {"oneOf": [
                {"type": "object",
                 "properties": {"kind": {"const": "circle"}, "center": {"$ref": "#/$defs/point"},
                                "r": {"type": "integer", "minimum": 1, "maximum": 9}},
                 "required": ["kind", "center", "r"], "additionalProperties": False},
                {"type": "object",
                 "properties": {"kind": {"const": "path"},
                                "points": {"type": "array", "items": {"$ref": "#/$defs/point"},
                                           "maxItems": 3}},
                 "required": ["kind", "points"], "additionalProperties": False},
            ]},
        },
        "type": "object",
        "properties": {"title": {"type": "string", "maxLength": 10},
                       "shapes": {"type": "array", "items": {"$ref": "#/$defs/shape"},
                                  "maxItems": 2}},
        "required": ["shapes"],
        "additionalProperties": False,
    },
}
PROPERTY_SETTINGS = settings(max_examples=30, deadline=None, database=None,
                             suppress_health_check=[HealthCheck.too_slow])
WALK_TOKENS = 60
UNBOUNDED_DIGITS = DEFAULT_MAX_DIGITS  # docs/schema-support.md, "Digit caps"


def validator_of(schema):
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


@lru_cache(maxsize=None)
def property_constraint(name: str, whitespace: str, tokenizer):
    return structgen.compile_constraint(PROPERTY_SCHEMAS[name], tokenizer, whitespace=whitespace)


def accepts(constraint, tokenizer, text: str) -> bool:
    matcher = constraint.matcher()
    ids = tokenizer.encode(text, add_special_tokens=False)
    # A text the tokenizer cannot spell (it drops bytes it has no token for) cannot be generated.
    assume(tokenizer.decode(ids, clean_up_tokenization_spaces=False) == text)
    return all(matcher.advance(token) for token in ids) and matcher.is_accepting()


@lru_cache(maxsize=None)
def blank_tokens(tokenizer) -> frozenset[int]:
    """Ids of the tokens that spell only JSON whitespace."""
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))],
                                   clean_up_tokenization_spaces=False)
    return frozenset(i for i, text in enumerate(texts) if text and not text.strip(" \t\n\r"))


class _Outside(Exception):
    """The instance is valid but outside a departure documented in docs/schema-support.md."""


def _resolve(schema: dict, root: dict) -> dict:
    while "$ref" in schema:
        schema = root["$defs"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _number_fits(value: float, schema: dict) -> bool:
    bounded = any(key in schema for key in ("minimum", "maximum", "exclusiveMinimum",
                                            "exclusiveMaximum"))
    if not math.isfinite(value) or (bounded and value == 0 and math.copysign(1, value) < 0):
        return False
    text = json.dumps(value)
    if "e" in text or "E" in text:
        return False
    whole, _, fraction = text.lstrip("-").partition(".")
    # at most 15 digits in all, as the regex counts them: the integer part's too (``0.`` is one)
    return len(whole) <= UNBOUNDED_DIGITS and len(fraction) <= UNBOUNDED_DIGITS and \
        len(whole) + len(fraction) <= 15


def in_schema_form(value, schema: dict, root: dict):
    """``value`` with keys in the schema's property order; raises _Outside past a departure."""
    schema = _resolve(schema, root)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            defs = {"$defs": root.get("$defs", {})}
            branch = next(sub for sub in schema[key]
                          if validator_of({**defs, **_resolve(sub, root)}).is_valid(value))
            return in_schema_form(value, branch, root)
    if isinstance(value, dict):
        order = list(schema.get("properties", {}))
        return {key: in_schema_form(value[key], schema["properties"][key], root)
                for key in sorted(value, key=order.index)}
    if isinstance(value, list):
        return [in_schema_form(item, schema.get("items", {}), root) for item in value]
    if isinstance(value, bool) or value is None:
        return value
    types = schema.get("type")
    types = [types] if isinstance(types, str) else types or []
    if isinstance(value, float) and "integer" in types and "number" not in types:
        raise _Outside("an integer written as a float")
    if isinstance(value, int):
        bounded_both = (("minimum" in schema or "exclusiveMinimum" in schema)
                        and ("maximum" in schema or "exclusiveMaximum" in schema))
        if not bounded_both and len(str(abs(value))) > UNBOUNDED_DIGITS:
            raise _Outside("more integer digits than the cap")
    if isinstance(value, float) and not _number_fits(value, schema):
        value = round(value, 6) + 0.0  # + 0.0 turns -0.0 into 0.0
        if not _number_fits(value, schema):
            raise _Outside("a number past the digit caps")
    if isinstance(value, str) and "pattern" in schema:
        pattern = schema["pattern"]
        if pattern.startswith("^") and pattern.endswith("$") and \
                not re.fullmatch(pattern[1:-1], value):
            raise _Outside("matches only through Python's `$` before a final newline")
    return value


def schema_instances(name: str):
    schema = PROPERTY_SCHEMAS[name]
    validator = validator_of(schema)

    def form(value):
        try:
            value = in_schema_form(value, schema, schema)
        except _Outside:
            return None
        return (value,) if validator.is_valid(value) else None  # rounding may leave the schema

    # from_schema resolves $refs in place: give it a copy, so the engine compiles the original.
    return from_schema(copy.deepcopy(schema)).map(form).filter(lambda boxed: boxed is not None)\
        .map(lambda boxed: boxed[0])


def one_spelling(schema) -> bool:
    """True where values under enum, const or pattern occur: those have one spelling (raw)."""
    text = json.dumps(schema)
    return any(f'"{key}":' in text for key in ("enum", "const", "pattern"))


def texts_of(value, schema) -> dict[str, list[str]]:
    raw = json.dumps(value, ensure_ascii=False)
    escaped = not one_spelling(schema) and not any(ord(ch) > 0xFFFF for ch in raw)
    return {
        **{mode: [dumps(value, mode)] for mode in BOUNDED},
        "flexible": [json.dumps(value, ensure_ascii=escaped),
                     json.dumps(value, indent=2, ensure_ascii=False)],
    }


@pytest.mark.parametrize("name", list(PROPERTY_SCHEMAS))
@PROPERTY_SETTINGS
@given(data=st.data())
def test_generated_instances_are_accepted(name, data, tokenizer):
    value = data.draw(schema_instances(name), label="instance")
    assert validator_of(PROPERTY_SCHEMAS[name]).is_valid(value)
    for whitespace, texts in texts_of(value, PROPERTY_SCHEMAS[name]).items():
        constraint = property_constraint(name, whitespace, tokenizer)
        for text in texts:
            assert accepts(constraint, tokenizer, text), f"{whitespace} rejected {text!r}"


@pytest.mark.parametrize("whitespace", WHITESPACE_MODES)
@pytest.mark.parametrize("name", list(PROPERTY_SCHEMAS))
@PROPERTY_SETTINGS
@given(data=st.data())
def test_accepted_walks_validate(name, whitespace, data, tokenizer):
    constraint = property_constraint(name, whitespace, tokenizer)
    blank = blank_tokens(tokenizer)
    matcher = constraint.matcher(max_tokens=WALK_TOKENS)
    eos = constraint.eos_token_id
    ids: list[int] = []
    while not matcher.is_finished():
        if matcher.is_accepting() and data.draw(st.booleans(), label="stop"):
            break
        allowed = [token for token in matcher.allowed_token_ids() if token != eos]
        if not allowed:
            break
        # Flexible mode allows hundreds of whitespace tokens almost everywhere; drawn uniformly they
        # would fill the budget, so a whitespace token is taken one step in eight at most.
        other = [token for token in allowed if token not in blank]
        if other and len(other) < len(allowed) and data.draw(st.integers(0, 7), label="blank") > 0:
            allowed = other
        token = allowed[data.draw(st.integers(0, len(allowed) - 1), label="token index")]
        assert matcher.advance(token), f"advance refused allowed token {token}"
        ids.append(token)
    # The budget steers every walk to an accepting state on the finite-state engine.
    if getattr(constraint, "engine", None) == "outlines-core":
        assert matcher.is_accepting(), tokenizer.decode(ids)
    elif not matcher.is_accepting():
        return  # llguidance stops at a budget without steering: nothing accepted to check
    text = tokenizer.decode(ids, clean_up_tokenization_spaces=False)
    value = json.loads(text)
    errors = [error.message for error in validator_of(PROPERTY_SCHEMAS[name]).iter_errors(value)]
    assert not errors, f"accepted {text!r}: {errors}"
    assert whitespace == "flexible" or relaid(text, whitespace) == text, f"{whitespace}: {text!r}"
