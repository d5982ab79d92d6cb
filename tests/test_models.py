"""Bring your own model: a transformers model and tokenizer the caller loaded, used in place.

The model here is built by the test with plain transformers (a 2-layer Llama with random weights
over the real SmolLM2 tokenizer, saved and loaded back with ``from_pretrained``), in bfloat16, so
keeping its dtype is visible. A constraint holds whatever the weights, so every answer validates.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import transformers
from pydantic import BaseModel, Field

import structgen
from structgen.backends.transformers import as_model


class City(BaseModel):
    name: str = Field(max_length=12)
    population: int = Field(ge=0)


def weather(city: str) -> str:
    """The weather in a city."""
    return "sunny"


@pytest.fixture(scope="module")
def user_model(tmp_path_factory, smollm2_tokenizer):
    """What a user script does: from_pretrained a model and its tokenizer with transformers."""
    config = transformers.LlamaConfig(
        vocab_size=len(smollm2_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
        tie_word_embeddings=True, bos_token_id=smollm2_tokenizer.bos_token_id,
        eos_token_id=smollm2_tokenizer.eos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        built = transformers.LlamaForCausalLM(config)
    directory = tmp_path_factory.mktemp("user-model")
    built.save_pretrained(directory)
    smollm2_tokenizer.save_pretrained(directory)
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.bfloat16)
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    return model, tokenizer


def weights(hf_model) -> dict[str, tuple]:
    """Where every parameter and buffer lives: storage address, device, dtype."""
    tensors = dict(hf_model.named_parameters())
    tensors.update(dict(hf_model.named_buffers()))
    return {name: (t.data_ptr(), t.device, t.dtype) for name, t in tensors.items()}


def test_a_model_loaded_with_transformers_gives_validated_objects_in_place(user_model):
    hf_model, tokenizer = user_model
    before = weights(hf_model)
    model = structgen.from_transformers(hf_model, tokenizer)
    assert model.hf_model is hf_model and model.tokenizer is tokenizer
    assert model.context_length == 1024  # the config's max_position_embeddings
    assert model.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")  # ChatML end of turn
    city = structgen.generate(City, "A city?", model=model, max_tokens=40, temperature=1.0, seed=2)
    assert isinstance(city, City)
    # no second copy of the weights, nothing moved or cast: the very same tensors
    assert weights(hf_model) == before
    assert hf_model.dtype == torch.bfloat16 and model.device == hf_model.device


def test_every_entry_point_takes_the_wrapped_model(user_model, tmp_path):
    hf_model, tokenizer = user_model
    before = weights(hf_model)
    model = structgen.from_transformers(hf_model, tokenizer)
    batch = structgen.generate_batch(City, ["One.", "Two.", ""], model=model, max_tokens=40)
    assert isinstance(batch[0], City) and isinstance(batch[1], City)
    assert isinstance(batch[2], structgen.EmptyPromptError)
    calls = structgen.call_tools([weather], "Weather in Paris?", model=model, tool_choice="required",
                                 max_tokens=60)
    assert calls and all(call.name == "weather" for call in calls)
    *partials, final = list(structgen.stream(City, "A city?", model=model, max_tokens=40))
    assert isinstance(final, City)
    assert all(isinstance(p, structgen.Partial) for p in partials)
    # batch jobs: the local engine takes the loaded model in place of a name
    from structgen.batch import BatchJob, run_job

    schema = tmp_path / "city.json"
    schema.write_text(json.dumps(City.model_json_schema()))
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("".join(json.dumps({"text": f"City {i}?"}) + "\n" for i in range(3)))
    job = BatchJob(schema=str(schema), model=model, batch_size=2, max_tokens=40)
    summary = run_job(job, str(source), str(target), progress=False)
    records = [json.loads(line) for line in target.read_text().splitlines()]
    assert summary.ok == 3 and all(City.model_validate(r["result"]) for r in records)
    assert weights(hf_model) == before


def test_load_model_returns_a_loaded_model_as_it_is(user_model):
    model = structgen.from_transformers(*user_model)
    assert structgen.load_model(model) is model
    with pytest.raises(structgen.ModelError, match="keeps its device and dtype"):
        structgen.load_model(model, device="cpu")


def test_a_bare_transformers_model_as_model_says_to_wrap_it(user_model):
    hf_model, _ = user_model
    with pytest.raises(structgen.GenerationError, match="from_transformers"):
        structgen.generate(int, "Number?", model=hf_model)


def test_the_context_length_comes_from_the_tokenizer_or_the_caller(user_model):
    hf_model, tokenizer = user_model
    assert structgen.from_transformers(hf_model, tokenizer, context_length=256).context_length == 256

    class Bare(torch.nn.Module):
        """The transformers model API without any context length in its config."""

        config = transformers.PretrainedConfig()

        @property
        def device(self):
            return torch.device("cpu")

    bounded = copy.deepcopy(tokenizer)
    bounded.model_max_length = 4096
    assert structgen.from_transformers(Bare(), bounded).context_length == 4096
    # tokenizer's model_max_length is transformers' "unknown" (1e30): nothing says, a typed error
    with pytest.raises(structgen.ModelError, match="context_length="):
        structgen.from_transformers(Bare(), tokenizer)
    with pytest.raises(structgen.ModelError, match="positive int"):
        structgen.from_transformers(hf_model, tokenizer, context_length=0)


def test_no_end_of_turn_token_is_a_typed_error(user_model):
    hf_model, tokenizer = user_model
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    plain.eos_token = None
    assert plain.eos_token_id is None
    with pytest.raises(structgen.ModelError, match="end-of-turn token"):
        structgen.from_transformers(hf_model, plain)


@pytest.mark.parametrize("model, tokenizer", [("a name", None), (object(), None)])
def test_what_is_not_a_model_or_tokenizer_is_refused(user_model, model, tokenizer):
    hf_model, real_tokenizer = user_model
    with pytest.raises(structgen.ModelError):
        structgen.from_transformers(model, real_tokenizer)
    with pytest.raises(structgen.ModelError, match="tokenizer"):
        structgen.from_transformers(hf_model, tokenizer)
    with pytest.raises(structgen.ModelError, match="already a structgen Model"):
        structgen.from_transformers(as_model(structgen.from_transformers(hf_model, real_tokenizer)),
                                    real_tokenizer)


class LoraShaped(torch.nn.Module):
    """The shape of peft's ``PeftModelForCausalLM`` (peft is not a dependency): ``forward`` takes
    ``**kwargs`` and passes them to the base model, ``get_base_model()`` returns it."""

    def __init__(self, base):
        super().__init__()
        self.base_model = base

    def get_base_model(self):
        return self.base_model

    @property
    def config(self):
        return self.base_model.config

    @property
    def device(self):
        return self.base_model.device

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, labels=None, **kwargs):
        return self.base_model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)


def test_a_wrapper_that_passes_kwargs_through_decodes_with_its_base_models_cache(user_model):
    import warnings

    hf_model, tokenizer = user_model
    model = structgen.from_transformers(LoraShaped(hf_model), tokenizer)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # transformers 5.2x: past_key_values is deprecated
        city = structgen.generate(City, "A city?", model=model, max_tokens=40)
    assert isinstance(city, City)
