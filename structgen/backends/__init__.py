"""Model backends. transformers is the default (and, for now, only) one."""

from structgen.backends.transformers import Model, from_transformers, load_model

__all__ = ["Model", "from_transformers", "load_model"]
