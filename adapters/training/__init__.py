"""Persona training: data generation (`data`), persona styles and cards (`personas`), the QLoRA
recipe (`train`), handing its folder to a server (`upload`) and batched greedy generation through
the server's own engine (`engine_io`).

Entry points: `python -m adapters.training.data` writes the training data; `cameo train` (or
`python -m adapters.training.train`) trains one persona into a folder (default `trained/<name>`)
and, with `--upload URL`, uploads it to a running server. Guide: docs/TRAINING.md; a data and
card template: `template/`.
"""
