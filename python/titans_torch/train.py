"""Fine-tunes a Titans model directory on text and writes a new one that titans-server serves.

    python3 -m titans_torch.train --model_dir models/default --data notes.txt --out my-model \
        --steps 500 --batch 8 --seq_len 512 --lr 3e-4

Next-byte prediction on random windows of the text (the byte tokenizer), each window from a fresh
session state; the memory is trained through its chunked form like the rest of the model. AdamW
(weight decay on matrices only), linear warm-up then cosine decay, gradient clipping. The last
`--heldout_fraction` of the text is never trained on; its bits per byte are reported at the start
and the end. On a machine with a CUDA GPU (and a CUDA PyTorch) it trains there unless
`--device cpu`.

Checkpoints: every `--checkpoint_every` steps the model and the optimizer go to OUT/checkpoint
(written atomically); `--resume` continues from there with the same data order. The final model
is written to OUT (config.json + model.safetensors, initialization "trained", the command in its
description).
"""
from __future__ import annotations

import argparse
import math
import os
import random
import shlex
import sys
import time

import torch
import torch.nn.functional as F

from titans_torch.model import TitansModel


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python3 -m titans_torch.train",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--model_dir", required=True, help="model to start from")
    p.add_argument("--data", required=True, help="text file(s), comma-separated")
    p.add_argument("--out", required=True, help="directory of the new model")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq_len", type=int, default=512, help="bytes per training window")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--min_lr", type=float, default=3e-5)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--weight_decay", type=float, default=0.1)
    p.add_argument("--clip", type=float, default=1.0, help="gradient norm clip (0: off)")
    p.add_argument("--heldout_fraction", type=float, default=0.05)
    p.add_argument("--heldout_bytes", type=int, default=16384,
                   help="bytes of the held-out text scored at the start and the end")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda[:N]")
    p.add_argument("--checkpoint_every", type=int, default=100)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    p.add_argument("--log_every", type=int, default=10)
    return p.parse_args(argv)


def load_text(paths: str) -> bytes:
    data = b""
    for path in paths.split(","):
        with open(path, "rb") as f:
            data += f.read()
    return data


def lr_at(step: int, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * min(1, progress)))


def batch_at(text: torch.Tensor, step: int, args) -> torch.Tensor:
    """Windows of seq_len + 1 bytes, chosen by (seed, step): a resumed run sees the same data."""
    rng = random.Random(args.seed * 1_000_003 + step)
    starts = [rng.randrange(0, len(text) - args.seq_len - 1) for _ in range(args.batch)]
    return torch.stack([text[s:s + args.seq_len + 1] for s in starts])


@torch.no_grad()
def bits_per_byte(model: TitansModel, text: torch.Tensor, device) -> float:
    """The held-out text read as one stream, in pieces of 512 bytes with the state carried."""
    state, nats, count, prev = None, 0.0, 0, None
    for begin in range(0, len(text), 512):
        ids = text[begin:begin + 512][None].to(device)
        logits, state = model(ids, state)
        if prev is not None:
            logits = torch.cat([prev, logits], 1)
            targets = ids
        else:
            targets = ids[:, 1:]
        logits = logits[:, :targets.shape[1]]
        nats += F.cross_entropy(logits.reshape(-1, logits.shape[-1]).double(),
                                targets.reshape(-1), reduction="sum").item()
        count += targets.numel()
        prev = state.last_logits[:, None]
    return nats / max(1, count) / math.log(2)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    torch.manual_seed(args.seed)
    data = torch.tensor(list(load_text(args.data)), dtype=torch.long)
    split = int(len(data) * (1 - args.heldout_fraction))
    train, heldout = data[:split], data[split:][:args.heldout_bytes]
    if len(train) < args.seq_len + 2:
        sys.exit(f"--data: {len(train)} training bytes, fewer than --seq_len + 2")
    model = TitansModel.load(args.model_dir, device=device)
    if model.config["tokenizer"]["type"] != "byte":
        sys.exit("titans_torch.train reads text as bytes: the model must use the byte tokenizer "
                 "(tokenizer.type 'byte'); SentencePiece models train with titans-train")
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=args.lr, betas=(0.9, 0.95))
    checkpoint = os.path.join(args.out, "checkpoint")
    start = 0
    if args.resume and os.path.exists(os.path.join(checkpoint, "trainer.pt")):
        saved = TitansModel.load(checkpoint, device=device)
        model.load_state_dict(saved.state_dict())
        trainer = torch.load(os.path.join(checkpoint, "trainer.pt"), map_location=device)
        optimizer.load_state_dict(trainer["optimizer"])
        start = trainer["step"]
        print(f"resumed at step {start} from {checkpoint}", flush=True)
    started_from = model.config.get("description", "")
    command = "python3 -m titans_torch.train " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    description = f"Fine-tuned by: {command}. Started from a model described as: {started_from}"
    if len(heldout) > 1 and start == 0:
        print(f"held-out bits/byte before: {bits_per_byte(model, heldout, device):.4f}",
              flush=True)
    tokens_done, t0 = 0, time.time()
    for step in range(start, args.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args)
        window = batch_at(train, step, args).to(device)
        logits, _ = model(window[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), window[:, 1:].reshape(-1))
        if not torch.isfinite(loss):
            print(f"step {step + 1}: non-finite loss, update skipped", flush=True)
            optimizer.zero_grad(set_to_none=True)
            continue
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if args.clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()
        tokens_done += window[:, 1:].numel()
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            rate = tokens_done / max(1e-9, time.time() - t0)
            print(f"step {step + 1:6d}  loss {loss.item():.4f}  "
                  f"({loss.item() / math.log(2):.3f} bits/byte)  lr {lr_at(step, args):.2e}  "
                  f"{rate:.0f} tok/s", flush=True)
        if args.checkpoint_every > 0 and (step + 1) % args.checkpoint_every == 0:
            model.save(checkpoint, description, "trained")
            torch.save({"optimizer": optimizer.state_dict(), "step": step + 1},
                       os.path.join(checkpoint, "trainer.pt.tmp"))
            os.replace(os.path.join(checkpoint, "trainer.pt.tmp"),
                       os.path.join(checkpoint, "trainer.pt"))
    if len(heldout) > 1:
        print(f"held-out bits/byte after: {bits_per_byte(model, heldout, device):.4f}", flush=True)
    model.save(args.out, description, "trained")
    print(f"python3 -m titans_torch.train: final model in {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
