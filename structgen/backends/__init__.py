"""Model backends. transformers is the default (and, for now, only) one."""

from structgen.backends.transformers import Model, load_model

__all__ = ["Model", "load_model"]
