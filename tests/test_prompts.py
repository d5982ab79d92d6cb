"""The Hermes JSON-mode prompt, word for word, through the chat template."""

from __future__ import annotations

import pytest

import structgen
from structgen.prompts import (
    json_mode_messages,
    json_mode_system_prompt,
    render_chat,
    render_chatml,
)

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
EXPECTED_SYSTEM = (
    "You are a helpful assistant that answers in JSON. Here's the json schema you must adhere to:\n"
    '<schema>\n{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}\n</schema>'
)


def test_system_prompt_is_the_hermes_one():
    assert json_mode_system_prompt(SCHEMA) == EXPECTED_SYSTEM


def test_string_prompt_becomes_system_plus_user_turn(smollm2_tokenizer):
    text = render_chat(smollm2_tokenizer, json_mode_messages("Give me a.", SCHEMA))
    assert text == (
        f"<|im_start|>system\n{EXPECTED_SYSTEM}<|im_end|>\n"
        "<|im_start|>user\nGive me a.<|im_end|>\n<|im_start|>assistant\n"
    )


def test_a_users_system_message_is_kept_and_the_schema_added():
    messages = json_mode_messages(
        [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}], SCHEMA)
    assert messages[0] == {"role": "system", "content": f"Be terse.\n\n{EXPECTED_SYSTEM}"}
    assert messages[1] == {"role": "user", "content": "Hi"}


def test_the_callers_messages_are_not_modified():
    original = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}]
    json_mode_messages(original, SCHEMA)
    assert original[0]["content"] == "Be terse."


def test_chatml_fallback_for_tokenizers_without_a_template():
    assert render_chatml([{"role": "user", "content": "Hi"}]) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("prompt", ["", "   ", [], [{"role": "user", "content": " "}]])
def test_empty_prompts_are_refused(prompt):
    with pytest.raises(structgen.EmptyPromptError):
        json_mode_messages(prompt, SCHEMA)


def test_messages_need_a_role():
    with pytest.raises(structgen.GenerationError, match="role"):
        json_mode_messages([{"content": "Hi"}], SCHEMA)
