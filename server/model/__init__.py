"""Loading the resident base model: the embedded default, local folders, quantization."""

from server.model.loader import LoadedModel, load_base

__all__ = ["LoadedModel", "load_base"]
