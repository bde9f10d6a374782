"""Persona training: data generation (`data`), persona styles and cards (`personas`), the QLoRA
recipe (`train`) and batched greedy generation through the server's own engine (`engine_io`).

Entry points: `python -m adapters.training.data` writes the training data, `python -m
adapters.training.train` trains one persona into a registry-ready folder.
"""
