"""Pointing a GPU cluster at vLLM for the same schema and the same Hermes prompt.

vLLM is not a structgen dependency (it needs a GPU build); this module only imports it inside
``generate_with_vllm``. ``vllm_requests`` builds what vLLM needs from structgen's own pieces: the
prompt text structgen would decode from (Hermes JSON-mode system prompt, the tokenizer's chat
template) and a structured-outputs ``regex`` compiled by structgen's schema compiler, so vLLM's
outlines backend enforces exactly the language structgen enforces locally.

What vLLM does not give: structgen's budget guarantee. A vLLM answer cut by ``max_tokens`` is
reported as an ``OutputError`` in place of its value.
"""

from __future__ import annotations

from typing import Any

from structgen.errors import ModelError, StructgenError
from structgen.prompts.hermes import as_messages, json_mode_messages, render_chat
from structgen.schema import DEFAULT_WHITESPACE, schema_to_regex
from structgen.types import as_output_type


def vllm_requests(output_type: Any, prompts: list, tokenizer, *,
                  whitespace: str = DEFAULT_WHITESPACE) -> tuple[list[str], dict]:
    """(prompt texts, structured-outputs parameters) for ``vllm.LLM.generate``."""
    spec = as_output_type(output_type)
    if spec.is_json:
        regex = schema_to_regex(spec.schema, whitespace=whitespace)
        conversations = [json_mode_messages(prompt, spec.schema) for prompt in prompts]
    else:
        regex = spec.regex
        conversations = [as_messages(prompt) for prompt in prompts]
    return [render_chat(tokenizer, messages) for messages in conversations], {"regex": regex}


def generate_with_vllm(llm, output_type: Any, prompts: list, *, max_tokens: int = 512,
                       temperature: float = 0.0, whitespace: str = DEFAULT_WHITESPACE) -> list:
    """Generate with a ``vllm.LLM`` (start it with ``structured_outputs_config={"backend": "outlines"}``).

    Returns one value per prompt, or the row's ``StructgenError`` in its place, as
    ``generate_batch`` does.
    """
    try:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams
    except ImportError:
        raise ModelError("generate_with_vllm needs vLLM (pip install vllm, on a GPU machine)") from None
    spec = as_output_type(output_type)
    texts, structured = vllm_requests(spec, prompts, llm.get_tokenizer(), whitespace=whitespace)
    sampling = SamplingParams(max_tokens=max_tokens, temperature=temperature,
                              structured_outputs=StructuredOutputsParams(**structured))
    results = []
    for output in llm.generate(texts, sampling):
        try:
            results.append(spec.parse(output.outputs[0].text))
        except StructgenError as error:
            results.append(error)
    return results
