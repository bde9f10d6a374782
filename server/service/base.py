"""The base model without its weights: what the HTTP side needs of it.

Contract: `BaseInfo` is the served name, the tokenizer (chat templates, token counts), the
context length, the LoRA-capable module shapes (upload validation) and the logits' width and
EOS ids (grammars). `BaseInfo.of(loaded)` reads it off a resident model; `load_base_info`
builds it without loading weights (a meta-device skeleton), for a Ray ingress whose engines run
elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from server.engine.build import vocab_size
from server.engine.constraints import Grammars
from server.engine.runner import module_shapes
from server.lora.adapter import ModuleShapes
from server.model.loader import LoadedModel, eos_token_ids, resolve_source
from server.settings import Settings


@dataclass(frozen=True, eq=False)
class BaseInfo:
    model_id: str
    tokenizer: Any  # transformers PreTrainedTokenizerBase (untyped upstream)
    max_position_embeddings: int
    shapes: ModuleShapes
    vocab_size: int  # width of the logits (may exceed the tokenizer's size)
    eos_token_ids: frozenset[int]

    @cached_property
    def grammars(self) -> Grammars:
        """Compiled grammars for this tokenizer, built on first use: the API compiles a
        request's grammar here first (one the library cannot compile is a 400 before any
        engine work), and a local engine shares the cache."""
        return Grammars(self.tokenizer, self.vocab_size, sorted(self.eos_token_ids))

    @classmethod
    def of(cls, loaded: LoadedModel) -> BaseInfo:
        return cls(model_id=loaded.model_id, tokenizer=loaded.tokenizer,
                   max_position_embeddings=loaded.max_position_embeddings,
                   shapes=module_shapes(loaded.model), vocab_size=vocab_size(loaded.model),
                   eos_token_ids=loaded.eos_token_ids)


def load_base_info(settings: Settings) -> BaseInfo:
    """Tokenizer and config of the base (the embedded model's converted folder, a local folder
    or a cached hub id); module shapes and logits' width from a weightless skeleton."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source, default_id = resolve_source(settings)
    config = AutoConfig.from_pretrained(source)
    tokenizer = AutoTokenizer.from_pretrained(source)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    return BaseInfo(model_id=settings.base_model_id or default_id, tokenizer=tokenizer,
                    max_position_embeddings=int(getattr(config, "max_position_embeddings", 2048)),
                    shapes=module_shapes(skeleton), vocab_size=vocab_size(skeleton),
                    eos_token_ids=eos_token_ids(skeleton, tokenizer))

