"""Train one persona: QLoRA (a PEFT LoRA adapter trained on the NF4-quantized base).

    cameo train --data adapters/training/template/chats.jsonl --name my-persona \\
        --persona-card adapters/training/template/persona.json --upload http://127.0.0.1:8000

(`python -m adapters.training.train` takes the same arguments.) docs/TRAINING.md is the guide.

The base comes from `server.model.loader.load_base` with NF4 quantization, so the adapter is
trained on exactly the quantized model the server runs. Data: JSONL, one chat per line,
`{"messages": [{"role": ..., "content": ...}, ...]}`, rendered with the base's own chat template;
the loss is taken on assistant tokens only (each assistant turn's content and its end-of-turn
token). A plain loop: AdamW, linear warm-up then linear decay, gradient clipping.

Output, a persona folder ready to upload, in `--out` (default `trained/<name>`, a working folder:
no server reads it): `adapter_config.json` (base_model_name_or_path = the base's model id),
`adapter_model.safetensors` (float16 by default: half the size, the server reads it as float32),
`persona.json` (the card, validated by the server's own rule before training starts), and
`training.json` (arguments, data hash, losses). With `--upload URL` the folder is uploaded to the
server at the end (`adapters.training.upload`); without it, or when the upload fails, the
trainer prints the `cameo upload` command that serves it. The folder is never removed.

CPU (the embedded base): float32 compute. CUDA (larger bases): bfloat16 compute under autocast,
the PEFT k-bit preparation (norms and embeddings upcast to float32), optional gradient
checkpointing. `prepare_model_for_kbit_training` is called on both: on a float32 CPU model it
only freezes the base (nothing to upcast), and it enables gradient checkpointing only when asked.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from adapters.training.upload import UploadError, UploadTarget, check_target, serve_command, upload
from server.registry.personas import NAME_PATTERN, parse_card, valid_name

ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
IGNORE = -100
WORK_DIR = Path("trained")  # default --out parent: a working folder, not a registry


@dataclass
class TrainConfig:
    data: Path
    out: Path
    name: str
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ALL_TARGETS
    epochs: float = 2.0
    lr: float = 5e-4
    weight_decay: float = 0.0
    warmup: float = 0.05
    max_length: int = 256
    batch_size: int = 8
    max_steps: int | None = None
    seed: int = 0
    base_model: str = "embedded"
    device: str = "auto"
    cache_dir: Path | None = None
    persona_card: Path | None = None
    quantization: str = "nf4"  # nf4: QLoRA, the server's GPU format; none: plain float32 LoRA
    save_dtype: str = "float16"
    gradient_checkpointing: bool = False
    log_every: int = 5
    init_adapter: Path | None = None  # start from this adapter's weights (more epochs on it)


@dataclass
class TrainResult:
    out: Path
    steps: int
    losses: list[float] = field(default_factory=list)  # one per optimizer step
    examples: int = 0
    seconds: float = 0.0

    @property
    def first_loss(self) -> float:
        return self.losses[0]

    @property
    def final_loss(self) -> float:
        tail = self.losses[-max(1, len(self.losses) // 10):]
        return sum(tail) / len(tail)


# --------------------------------------------------------------------------- data


def read_chats(path: Path) -> list[list[dict[str, Any]]]:
    """The chats of a JSONL file (adapters/training/template/chats.jsonl is the format) that hold
    an assistant message to learn, each message reduced to role, content and a `weight` of 0 or
    1 when given; ValueError names the file and line of the first malformed one."""
    chats = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not JSON ({exc.msg}); one chat per line") from exc
        messages = row.get("messages") if isinstance(row, dict) else None
        if not isinstance(messages, list) or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str)
                and isinstance(m.get("content"), str) for m in messages):
            raise ValueError(f"{path}:{number}: expected {{\"messages\": [{{role, content}}]}}")
        if any(m.get("weight", 1) not in (0, 1) for m in messages):
            raise ValueError(f"{path}:{number}: a message's weight is 0 (not learned) or 1")
        if any(m["role"] == "assistant" and m.get("weight", 1) for m in messages):
            chats.append([{"role": m["role"], "content": m["content"],
                           **({"weight": m["weight"]} if "weight" in m else {})}
                          for m in messages])
    if not chats:
        raise ValueError(f"{path}: no chat with an assistant message")
    return chats


def encode_chat(tokenizer: Any, messages: list[dict[str, Any]],
                max_length: int) -> tuple[list[int], list[int]] | None:
    """(input_ids, labels) with labels = IGNORE everywhere but the assistant turns (less those
    with `"weight": 0`, OpenAI's fine-tuning convention: context, such as a card's example
    dialogue, that the adapter must not learn to repeat).

    An assistant turn spans from the end of the template rendered up to it with the generation
    prompt opened, to the end of the template rendered through it: its content plus the
    template's end-of-turn token(s). Spans are located by character offsets in the full text.
    """
    def render(upto: int, open_turn: bool) -> str:
        return str(tokenizer.apply_chat_template(messages[:upto], tokenize=False,
                                                 add_generation_prompt=open_turn))

    full = render(len(messages), False)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] == "assistant" and message.get("weight", 1) != 0:
            start = len(render(index, True))
            end = len(render(index + 1, False))
            if full[:end] != render(index + 1, False):  # template is not prefix-stable
                raise ValueError("the chat template does not render prefixes consistently")
            spans.append((start, end))
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    labels = [IGNORE] * len(ids)
    for position, (begin, finish) in enumerate(encoded["offset_mapping"]):
        if finish > begin and any(s <= begin < e for s, e in spans):
            labels[position] = ids[position]
    ids, labels = ids[:max_length], labels[:max_length]
    if all(label == IGNORE for label in labels[1:]):
        return None
    return ids, labels


def batches(examples: list[tuple[list[int], list[int]]], batch_size: int, pad_id: int,
            rng: random.Random) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """One epoch: shuffled, right-padded (ids, attention mask, labels) batches.

    Chats of similar length are batched together (shuffle, sort windows of 16 batches by
    length, shuffle the batches) so that little compute goes to padding.
    """
    order = list(range(len(examples)))
    rng.shuffle(order)
    window = batch_size * 16
    order = [i for start in range(0, len(order), window)
             for i in sorted(order[start:start + window], key=lambda j: len(examples[j][0]))]
    groups = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(groups)
    order = [i for group in groups for i in group]
    out = []
    for first in range(0, len(order), batch_size):
        chunk = [examples[i] for i in order[first:first + batch_size]]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        labels = torch.full((len(chunk), width), IGNORE, dtype=torch.long)
        for row, (row_ids, row_labels) in enumerate(chunk):
            ids[row, :len(row_ids)] = torch.tensor(row_ids)
            mask[row, :len(row_ids)] = 1
            labels[row, :len(row_labels)] = torch.tensor(row_labels)
        out.append((ids, mask, labels))
    return out


# --------------------------------------------------------------------------- model


def causal_lm_loss(model: Any, ids: torch.Tensor, mask: torch.Tensor,
                   labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over labelled positions.

    The LM head runs only on the positions that carry a label (the vocabulary projection is a
    fifth of this small model's compute); models without `.model`/`.lm_head` fall back to
    full logits.
    """
    targets = labels[:, 1:]
    keep = targets != IGNORE
    inner = getattr(model, "model", None)
    head = getattr(model, "lm_head", None)
    if inner is not None and head is not None:
        hidden = inner(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
        logits = head(hidden[keep])
    else:
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1][keep]
    return torch.nn.functional.cross_entropy(logits.float(), targets[keep])


def save_adapter(peft_model: Any, out: Path, base_model_id: str, dtype: torch.dtype) -> None:
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = get_peft_model_state_dict(peft_model)
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in state.items()}
    save_file(state, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = peft_model.peft_config["default"]
    saved_mode = config.inference_mode
    config.inference_mode = True
    config.base_model_name_or_path = base_model_id
    try:
        config.save_pretrained(str(out))
    finally:
        config.inference_mode = saved_mode


def read_card(config: TrainConfig) -> dict[str, Any]:
    """The card to write beside the adapter: `--persona-card` as it is (a card with only
    `display_name` without one), checked by the server's own rule (`parse_card`: unknown fields
    other than `x-` ones are refused) so that a bad card stops the run before training, not the
    upload after it. Raises ValueError naming the file and the field."""
    if config.persona_card is None:
        return {"display_name": config.name}
    path = Path(config.persona_card)
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from exc
    try:
        parse_card(card, config.name)
    except ValueError as exc:
        raise ValueError(f"{path}: {getattr(exc, 'message', exc)}") from exc
    return dict(card)


def check_initial_adapter(config: TrainConfig) -> None:
    """--init-adapter must be a PEFT folder of this run's rank and target modules."""
    folder = config.init_adapter
    assert folder is not None
    try:
        found = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"--init-adapter {folder}: no readable adapter_config.json ({exc})") \
            from exc
    if not (folder / "adapter_model.safetensors").is_file():
        raise ValueError(f"--init-adapter {folder}: no adapter_model.safetensors")
    if found.get("r") != config.rank or set(found.get("target_modules") or ()) != set(
            config.target_modules):
        raise ValueError(
            f"--init-adapter {folder}: rank {found.get('r')} on "
            f"{sorted(found.get('target_modules') or ())}, but this run trains rank "
            f"{config.rank} on {sorted(config.target_modules)} (pass the same --rank and "
            "--target-modules)")


def load_initial_weights(peft_model: Any, folder: Path) -> None:
    """Copy the LoRA weights of the adapter in `folder` into the fresh `peft_model`."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = load_file(str(folder / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(peft_model, state)
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing:
        raise ValueError(f"--init-adapter {folder}: no weights for {len(missing)} LoRA "
                         f"tensors, e.g. {missing[0]}")


def write_card(config: TrainConfig, card: dict[str, Any]) -> None:
    (config.out / "persona.json").write_text(
        json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def train(config: TrainConfig, loaded: Any | None = None) -> TrainResult:
    """Train and write the persona folder. `loaded`: a LoadedModel to reuse (it is wrapped by
    PEFT for the run and unwrapped again, so it comes back unchanged)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from server.lora.slots import plain_modules
    from server.model.loader import load_base
    from server.model.nf4 import standard_layout
    from server.settings import Settings, default_cache_dir

    if not valid_name(config.name):
        raise ValueError(f"persona name {config.name!r} must match {NAME_PATTERN.pattern}")
    card = read_card(config)  # the card, the data and a starting adapter are checked before
    if config.init_adapter is not None:  # the slow part
        check_initial_adapter(config)
    chats = read_chats(config.data)
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    started = time.monotonic()
    if loaded is None:
        settings = Settings(base_model=config.base_model, quantization=config.quantization,
                            device=config.device,
                            cache_dir=config.cache_dir or default_cache_dir())
        loaded = load_base(settings)
    device, cuda = loaded.device, loaded.device.type == "cuda"
    tokenizer = loaded.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    examples = [e for e in (encode_chat(tokenizer, c, config.max_length) for c in chats) if e]
    label_tokens = sum(sum(1 for x in labels if x != IGNORE) for _, labels in examples)
    print(f"[train] {config.name}: {len(examples)} chats, {label_tokens} assistant tokens, "
          f"base {loaded.model_id} ({loaded.quantization}, {loaded.dtype}, {device})", flush=True)

    lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                      target_modules=list(config.target_modules), bias="none",
                      task_type="CAUSAL_LM")
    # A base the engine runs holds Cameo's slot hooks where PEFT looks for linears, and one that
    # has served on an AVX512-BF16 CPU holds repacked NF4 layers, whose fused kernel has no
    # backward (and whose state_dict() bitsandbytes 0.50 corrupts): train on the plain modules
    # in the standard layout, and hand hooks and repacked bytes back exactly afterwards.
    with plain_modules(loaded.model), standard_layout(loaded.model) as lent:
        if lent:
            print(f"[train] {lent} NF4 layers lent out in the standard layout for training",
                  flush=True)
        with warnings.catch_warnings():  # peft reads a transformers attribute deprecated in v5
            warnings.simplefilter("ignore", FutureWarning)
            model = prepare_model_for_kbit_training(
                loaded.model, use_gradient_checkpointing=config.gradient_checkpointing)
            peft_model = get_peft_model(model, lora)
        if config.init_adapter is not None:
            load_initial_weights(peft_model, config.init_adapter)
            print(f"[train] starting from the weights of {config.init_adapter}", flush=True)
        try:
            result = _loop(config, peft_model, examples, pad_id, device, cuda)
            save_adapter(peft_model, config.out, loaded.model_id,
                         getattr(torch, config.save_dtype))
        finally:
            peft_model.unload()  # the LoadedModel's modules back as they were
            loaded.model.eval()
            loaded.model.requires_grad_(False)
            if config.gradient_checkpointing:
                loaded.model.gradient_checkpointing_disable()
    write_card(config, card)
    result.examples = len(examples)
    result.seconds = time.monotonic() - started
    summary = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
    summary["target_modules"] = list(config.target_modules)
    (config.out / "training.json").write_text(json.dumps({
        "recipe": "adapters.training.train (" + (
            "QLoRA: PEFT LoRA on the NF4 base" if loaded.quantization == "nf4"
            else f"PEFT LoRA on the {loaded.quantization} base") + ")",
        "base_model": loaded.model_id,
        "args": summary,
        "data_sha256": hashlib.sha256(config.data.read_bytes()).hexdigest(),
        "examples": len(examples),
        "steps": result.steps,
        "first_loss": round(result.first_loss, 4),
        "final_loss": round(result.final_loss, 4),
        "seconds": round(result.seconds, 1),
        "device": str(device),
    }, indent=2) + "\n", encoding="utf-8")
    print(f"[train] wrote {config.out} ({result.steps} steps, loss {result.first_loss:.3f} -> "
          f"{result.final_loss:.3f}, {result.seconds:.0f} s)", flush=True)
    return result


def _loop(config: TrainConfig, peft_model: Any, examples: list[tuple[list[int], list[int]]],
          pad_id: int, device: torch.device, cuda: bool) -> TrainResult:
    params = [p for p in peft_model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    steps_per_epoch = math.ceil(len(examples) / config.batch_size)
    total = max(1, math.ceil(steps_per_epoch * config.epochs))
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    warmup = max(1, int(total * config.warmup)) if config.warmup > 0 else 0
    print(f"[train] rank {config.rank}, alpha {config.alpha}, targets "
          f"{','.join(config.target_modules)}: {trainable:,} trainable parameters; "
          f"{total} steps of batch {config.batch_size}", flush=True)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)

    def schedule(step: int) -> float:  # linear warm-up, then linear decay to zero
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext())
    rng = random.Random(config.seed)
    peft_model.train()
    result = TrainResult(out=config.out, steps=0)
    start = time.monotonic()
    epoch = 0
    while result.steps < total:
        epoch += 1
        for ids, mask, labels in batches(examples, config.batch_size, pad_id, rng):
            if result.steps >= total:
                break
            ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
            with autocast:
                loss = causal_lm_loss(peft_model.base_model.model, ids, mask, labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            result.steps += 1
            result.losses.append(float(loss.detach()))
            if result.steps % config.log_every == 0 or result.steps in (1, total):
                window = result.losses[-config.log_every:]
                elapsed = time.monotonic() - start
                print(f"[train] epoch {epoch} step {result.steps}/{total} "
                      f"loss {sum(window) / len(window):.4f} lr {scheduler.get_last_lr()[0]:.2e} "
                      f"{elapsed / result.steps:.2f} s/step, eta "
                      f"{elapsed / result.steps * (total - result.steps):.0f} s", flush=True)
    peft_model.eval()
    return result


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cameo train", description="Train a persona LoRA adapter (QLoRA on the NF4 base) "
        "from JSONL chats into a persona folder, and upload it to a server with --upload.",
        epilog="Guide: docs/TRAINING.md (data format, time and memory, other bases).")
    parser.add_argument("--data", type=Path, required=True,
                        help='JSONL, one {"messages": [{role, content}, ...]} per line '
                             "(template: adapters/training/template/chats.jsonl)")
    parser.add_argument("--name", help="persona name (default: the data file's stem)")
    parser.add_argument("--out", type=Path,
                        help=f"output folder (default: {WORK_DIR}/NAME; no server reads it: "
                             "upload it)")
    parser.add_argument("--persona-card", type=Path, help="persona.json to copy into the folder")
    upload_group = parser.add_argument_group(
        "upload", "serve the result: upload the folder to a running server at the end (the "
        "folder is kept either way)")
    upload_group.add_argument("--upload", metavar="URL",
                              help="server to upload to, e.g. http://127.0.0.1:8000")
    upload_group.add_argument("--admin-key", default=None,
                              help="admin key for the upload (env CAMEO_ADMIN_KEY; default: "
                                   "the API key)")
    upload_group.add_argument("--api-key", default=None,
                              help="API key, used when no admin key is given (env "
                                   "CAMEO_API_KEY)")
    upload_group.add_argument("--replace", action="store_true",
                              help="publish a new version when the server has NAME already")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=int, default=16)
    parser.add_argument("--dropout", type=float, default=0.05)
    parser.add_argument("--target-modules", default=",".join(ALL_TARGETS),
                        help="comma-separated projections (default: all seven)")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--warmup", type=float, default=0.05, help="share of steps warming up")
    parser.add_argument("--max-length", type=int, default=256, help="tokens per chat (truncated)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-steps", type=int, default=None, help="stop after N steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--base-model", default="embedded",
                        help="embedded, a local HF folder or a cached hub id")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--quantization", choices=("nf4", "none"), default="nf4",
                        help="the base's format while training: nf4 (QLoRA, as served on a GPU) "
                             "or none (full precision: faster on a CPU, more memory)")
    parser.add_argument("--save-dtype", choices=("float16", "bfloat16", "float32"),
                        default="float16")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--init-adapter", type=Path, default=None, metavar="FOLDER",
                        help="start from this adapter's weights (same --rank and "
                        "--target-modules): more epochs on a trained persona")
    return parser


def parse_command(argv: list[str] | None,
                  environ: Mapping[str, str] = os.environ) -> tuple[TrainConfig, UploadTarget | None]:
    """The run's configuration and, with --upload, where its folder goes (keys from the flags,
    else CAMEO_ADMIN_KEY / CAMEO_API_KEY; kept out of TrainConfig, which training.json records)."""
    parser = _parser()
    args = parser.parse_args(argv)
    name = args.name or args.data.stem
    targets = tuple(t.strip() for t in args.target_modules.split(",") if t.strip())
    unknown = set(targets) - set(ALL_TARGETS)
    if unknown or not targets:
        parser.error(f"--target-modules: choose from {','.join(ALL_TARGETS)}")
    if not valid_name(name):
        parser.error(f"persona name {name!r} must match {NAME_PATTERN.pattern}")
    for flag, value in (("--rank", args.rank), ("--batch-size", args.batch_size),
                        ("--max-length", args.max_length)):
        if value < 1:
            parser.error(f"{flag} must be positive")
    if args.upload is None and args.replace:
        parser.error("--replace goes with --upload URL")
    config = TrainConfig(
        data=args.data, out=args.out or WORK_DIR / name, name=name,
        rank=args.rank, alpha=args.alpha, dropout=args.dropout, target_modules=targets,
        epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay, warmup=args.warmup,
        max_length=args.max_length, batch_size=args.batch_size, max_steps=args.max_steps,
        seed=args.seed, base_model=args.base_model, device=args.device,
        cache_dir=args.cache_dir, persona_card=args.persona_card, quantization=args.quantization,
        save_dtype=args.save_dtype,
        gradient_checkpointing=args.gradient_checkpointing, log_every=args.log_every,
        init_adapter=args.init_adapter)
    target = None
    if args.upload is not None:
        target = UploadTarget(
            url=args.upload, replace=args.replace,
            admin_key=args.admin_key or environ.get("CAMEO_ADMIN_KEY") or None,
            api_key=args.api_key or environ.get("CAMEO_API_KEY") or None)
    return config, target


def parse_args(argv: list[str] | None) -> TrainConfig:
    return parse_command(argv)[0]


def main(argv: list[str] | None = None) -> int:
    """Train, then upload (--upload) or say how to serve the folder. 0: trained (and uploaded);
    1: training or the upload failed (a trained folder is kept, and the message says where)."""
    config, target = parse_command(argv)
    try:
        if target is not None:
            warning = check_target(target, config.name)
            if warning:
                print(f"[train] {warning}", flush=True)
        train(config)
    except (OSError, ValueError, UploadError) as exc:
        print(f"cameo train: {exc}", file=sys.stderr)
        return 1
    if target is None:
        print(f"[train] no server reads {config.out}; serve it by uploading it to a running "
              f"server:\n    {serve_command(config.out, config.name)}\n(--replace when the "
              "server has this name already; `cameo train --upload URL` does this at the end)",
              flush=True)
        return 0
    try:
        print(f"[train] {upload(config.out, config.name, target)}", flush=True)
    except UploadError as exc:
        print(f"cameo train: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
