"""Trains one memory head's write gate row (its theta gate's weights and bias: d + 1 numbers) by
gradient on long passkey streams of training text, everything else frozen.

    python3 -m titans_torch.train_gate --model_dir models/default --out gated \
        --layer 1 --head auto --data data/english.txt,data/kjv.txt --steps 20 --length 65536

Each step reads one stream of `--length` or half as many bytes: a window of the training text
(all but the last 5% of each file, as titans-train splits it; three steps in four from the first
file), or with probability --noise_fraction a window of RULER's noise haystack, with a passkey
needle in its first half and the question at the end, and minimises
    mean loss of the key's five digits + lm_weight * mean loss of the haystack's bytes
through the whole stream (read in pieces of 2,048 bytes, the gradient flowing through the memory
across all of them), with respect to that one gate row only (Adam, gradient norm clipped at 1).
So the gate learns which writes of text erase a key asked tens of thousands of bytes later,
while the language-modelling term keeps the writes that predict text (the offline fit of
`titans_torch.write_gate --fit_on` sees neither). A stream whose gradient is not finite (the
memory's recurrence over 64 K bytes can overflow it, mostly on keys the model already lost) is
skipped, as titans-train skips such batches.

Checkpoints after every step to OUT.checkpoint.pt, beside the model directory (written
atomically: the row, the optimizer, the data order); `--resume` continues from there, after an
interruption or to train a finished run for more --steps. Deterministic for a given --threads.
The model goes to OUT (config.json + model.safetensors, the command in its description).
"""
from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time

import torch
import torch.nn.functional as F

from titans_torch import passkey
from titans_torch.model import BOS, TitansModel
from titans_torch.write_gate import (add_head_arguments, read_training_texts, resolve_head,
                                     save_with_command)

PIECE = 2048  # bytes per forward call (the attention mask of one call is PIECE x PIECE)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python3 -m titans_torch.train_gate",
                                description=__doc__.split("\n\n")[0])
    add_head_arguments(p)
    p.add_argument("--data", required=True, help="training text files (comma-separated)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--length", type=int, default=65536, help="bytes of the longest stream")
    p.add_argument("--lr", type=float, default=0.005)
    p.add_argument("--lm_weight", type=float, default=1.0)
    p.add_argument("--noise_fraction", type=float, default=0.0,
                   help="share of the streams whose haystack is RULER's noise, not text")
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--resume", action="store_true", help="continue from OUT.checkpoint.pt")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps must be at least 1")
    if args.length < 256:
        p.error("--length must be at least 256 bytes")
    if not 0 <= args.noise_fraction <= 1:
        p.error("--noise_fraction must be in [0, 1]")
    return args


def stream_nats(model: TitansModel, ids: torch.Tensor):
    """The loss of every prediction of a batch of streams ids [B, N] from a fresh state, read in
    pieces of PIECE tokens with the gradient flowing across them: (nats [B, N - 1], logits
    [B, N - 1, V])."""
    state, losses, outputs = None, [], []
    for begin in range(0, ids.shape[1] - 1, PIECE):
        end = min(begin + PIECE, ids.shape[1] - 1)
        logits, state = model(ids[:, begin:end], state)
        losses.append(F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                      ids[:, begin + 1:end + 1].reshape(-1),
                                      reduction="none").view(ids.shape[0], -1))
        outputs.append(logits)
    return torch.cat(losses, 1), torch.cat(outputs, 1)


def passkey_stream(rng: random.Random, texts, length: int, noise_fraction: float = 0.0):
    """(tokens with <|bos|> first, mask of the haystack's bytes among the predictions, mask of
    the key's digits among the predictions): a window of a text, or with probability
    noise_fraction of RULER's noise haystack, with a needle in its first half. (With
    noise_fraction 0 no draw is made for it, so the streams are those of runs without it.)"""
    if noise_fraction > 0 and rng.random() < noise_fraction:
        offset = rng.randrange(len(passkey.NOISE))  # the cycle from there, at least length long
        cycles = length // len(passkey.NOISE) + 2
        text = passkey.noise(offset, cycles * len(passkey.NOISE) - offset)
    else:
        text = texts[0] if len(texts) == 1 or rng.random() < 0.75 else texts[
            rng.randrange(1, len(texts))]
    key = passkey.random_key(rng)
    needle, question = passkey.needle(key).encode(), passkey.QUESTION.encode()
    hay_len = max(0, length - len(needle) - len(question) - len(key))
    start = rng.randrange(0, max(1, len(text) - hay_len))
    hay = text[start:start + hay_len].encode("utf-8", "replace")[:hay_len]
    at = int(rng.random() * 0.5 * len(hay))
    tokens = [BOS] + list(hay[:at]) + list(needle) + list(hay[at:]) + list(question) + list(
        key.encode())
    n = len(tokens) - 1  # predictions: token i + 1 after tokens[:i + 1]
    is_text = torch.zeros(n, dtype=torch.bool)
    is_text[:at] = True
    is_text[at + len(needle):len(hay) + len(needle)] = True
    is_answer = torch.zeros(n, dtype=torch.bool)
    is_answer[n - len(key):] = True
    return tokens, is_text, is_answer


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model = TitansModel.load(args.model_dir)
    checkpoint = os.path.normpath(args.out) + ".checkpoint.pt"
    try:
        head = resolve_head(model, args.layer, args.head)
        texts, _ = read_training_texts(args.data)
        if any(len(t) < args.length for t in texts):
            raise ValueError(f"every --data file needs more than --length ({args.length}) "
                             "bytes of training text")
        if args.resume and not os.path.exists(checkpoint):
            raise ValueError(f"--resume: no checkpoint {checkpoint}")
    except (ValueError, OSError) as e:
        print(f"train_gate: {e}", file=sys.stderr)
        return 2
    for p in model.parameters():
        p.requires_grad_(False)
    m = f"layers.{args.layer}.memory.theta_proj."
    weight, bias = model.p(m + "weight"), model.p(m + "bias")
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    optimizer = torch.optim.Adam([weight, bias], lr=args.lr)
    rng = random.Random(args.seed)
    os.makedirs(os.path.dirname(checkpoint) or ".", exist_ok=True)
    first = 0
    if args.resume:
        saved = torch.load(checkpoint, weights_only=False)
        with torch.no_grad():
            weight[head] = saved["weight_row"]
            bias[head] = saved["bias_row"]
        optimizer.load_state_dict(saved["optimizer"])
        rng.setstate(saved["rng"])
        first = saved["step"]
        print(f"resumed at step {first}", flush=True)
    others = [i for i in range(weight.shape[0]) if i != head]
    for step in range(first, args.steps):
        began = time.time()
        length = rng.choice([args.length // 2, args.length])
        tokens, is_text, is_answer = passkey_stream(rng, texts, length, args.noise_fraction)
        ids = torch.tensor([tokens])
        optimizer.zero_grad()
        nats = stream_nats(model, ids)[0][0]
        answer, text = nats[is_answer].mean(), nats[is_text].mean()
        (answer + args.lm_weight * text).backward()
        with torch.no_grad():
            weight.grad[others] = 0
            bias.grad[others] = 0
        finite = bool(torch.isfinite(weight.grad).all() and torch.isfinite(bias.grad).all())
        if finite:
            torch.nn.utils.clip_grad_norm_([weight, bias], 1.0)
            optimizer.step()
        print(f"step {step + 1}: {len(tokens) - 1} bytes, answer {answer.item():.3f} nats/digit, "
              f"text {text.item() / math.log(2):.4f} bits/byte"
              + ("" if finite else ", non-finite gradient: skipped")
              + f" ({time.time() - began:.0f} s)", flush=True)
        torch.save({"step": step + 1, "weight_row": weight[head].detach().clone(),
                    "bias_row": bias[head].detach().clone(),
                    "optimizer": optimizer.state_dict(), "rng": rng.getstate()},
                   checkpoint + ".tmp")
        os.replace(checkpoint + ".tmp", checkpoint)
    weight.requires_grad_(False)
    bias.requires_grad_(False)
    save_with_command(model, args.out, "train_gate", argv)
    print(f"wrote {args.out}: {m}weight[{head}] and bias[{head}] trained for {args.steps} steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
