"""Retries for validators JSON Schema cannot express.

The constraint guarantees the schema; a pydantic ``field_validator``, ``model_validator`` or
``AfterValidator`` (or a tool's validator) may refuse more. With ``max_retries=N`` such a refusal
goes back to the model, as instructor does: the conversation continues with the refused answer as
an assistant turn and the validation errors as a user turn, and the answer is decoded again under
the same constraint. Every attempt is kept (``Attempt``); when the last one is refused too,
``RetriesExhaustedError`` carries them all.

Attempt ``k`` (0 = the first answer) of a seeded call samples with ``attempt_seed(seed, k)``:
the first answer is the one a call without retries gives, and each retry is reproducible.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from structgen.errors import GenerationError, OutputError, StructgenError, ToolArgumentsError

RETRY_PROMPT = ("Your previous answer does not validate:\n{problems}\n"
                "Write the whole answer again as JSON that follows the schema and fixes every "
                "error listed.")
TOOL_RETRY_PROMPT = ("Your previous tool call was refused:\n{problems}\n"
                     "Call the tools again, with arguments that fix every error listed.")


@dataclass(frozen=True)
class Attempt:
    """One decoded answer of a call: its exact text, the error that refused it (None for the
    answer that was kept), and its tokens, stop reason and decoding time."""

    text: str
    error: StructgenError | None
    prompt_tokens: int
    completion_tokens: int
    stop_reason: str
    seconds: float


def check_max_retries(max_retries: Any) -> None:
    """A count, refused up front: a typo should not cost a decode before it surfaces."""
    if not isinstance(max_retries, int) or isinstance(max_retries, bool) or max_retries < 0:
        raise GenerationError(f"max_retries must be an int of at least 0, not {max_retries!r}")


def attempt_seed(seed: int | None, attempt: int) -> int | None:
    """The seed of attempt ``attempt``: ``seed`` itself for the first, a stable hash after it
    (the same in every process, unlike ``hash``), so retries neither repeat nor drift."""
    if seed is None or attempt == 0:
        return seed
    digest = hashlib.sha256(f"structgen-retry:{seed}:{attempt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def problems_of(error: StructgenError) -> list[str]:
    """The refusal as short lines for the model: one per pydantic error, else the reason."""
    if isinstance(error, OutputError) and error.problems:
        return list(error.problems)
    if isinstance(error, ToolArgumentsError):
        return [f"{error.tool}: {error.reason}"]
    reason = getattr(error, "reason", None) or str(error)
    return [reason.removeprefix("does not validate: ")]


def retry_messages(messages: list[dict], answer: str, errors: list[StructgenError], *,
                   tools: bool = False) -> list[dict]:
    """``messages`` continued by the refused ``answer`` and a user turn listing ``errors``."""
    problems = "\n".join(f"- {line}" for error in errors for line in problems_of(error))
    prompt = (TOOL_RETRY_PROMPT if tools else RETRY_PROMPT).format(problems=problems)
    return [*messages, {"role": "assistant", "content": answer}, {"role": "user", "content": prompt}]
