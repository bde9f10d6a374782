"""Cameo: one quantized base model, many LoRA personas, one OpenAI-compatible server."""

__version__ = "0.1.0"
