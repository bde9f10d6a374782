"""`cameo train`: the trainer as a command of the `cameo` CLI, declared as an entry point.

pyproject.toml names `register` in the `cameo.commands` entry point group; the CLI calls it and
runs the command it returns (see `clients/cli/plugins.py` for the protocol: `help` and
`run(argv) -> int`). `run` hands every argument after `train` to `adapters.training.train.main`,
importing the trainer only then: it pulls in torch and the training-only packages, which
`cameo --help` and the other commands must not need. This module imports nothing of `clients`.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass

TRAINER = "adapters.training.train"


@dataclass(frozen=True)
class TrainCommand:
    help: str = "train a LoRA adapter (all arguments go to the trainer)"

    def run(self, argv: list[str]) -> int:
        try:
            train_main = importlib.import_module(TRAINER).main
        except (ImportError, AttributeError) as exc:
            print("cameo: error: 'cameo train' needs the trainer (adapters/training/train.py "
                  f"and the training extras: torch, peft): {exc}", file=sys.stderr, flush=True)
            return 2
        result = train_main(argv)
        return int(result) if isinstance(result, int) else 0


def register() -> TrainCommand:
    """The `cameo.commands` entry point: the `train` command."""
    return TrainCommand()
