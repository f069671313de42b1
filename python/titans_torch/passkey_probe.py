"""Greedy passkey recall in RULER's noise, digit by digit, with every miss named: which key, which
digit, the right digit's probability and what was read instead (docs/evaluation.md, "Holding the
passkey reads"). The misses of a refitted recall head are rare (a few keys in a hundred, mostly
keys with a repeated digit), so the tool lists them rather than a loss that averages them away.

    python3 -m titans_torch.passkey_probe --model_dir models/default,other --length 1024 \
        --tasks 100 --seed 9

A task is `length` bytes of the noise from a random phase with the needle at a uniform byte of its
first half, then the question and the key. Each digit is read after the true earlier ones (for a
greedy answer, the key is right when every digit is). Every model sees the same tasks.
"""
from __future__ import annotations

import argparse
import random
import sys

import torch

from titans_torch import passkey
from titans_torch.model import BOS, TitansModel


def task(rng: random.Random, length: int):
    """(tokens with <|bos|> first and the key last, the key, the needle's byte offset)."""
    key = passkey.random_key(rng)
    hay = passkey.haystack(rng, length).decode()
    at = rng.randrange(0, max(1, length // 2))
    text = hay[:at] + passkey.needle(key) + hay[at:] + passkey.QUESTION + key
    return [BOS] + list(text.encode()), key, at


def probe(model: TitansModel, tasks, batch: int = 10):
    """(keys right, the misses as "key@offset dN pP got C") for `tasks` of equal length."""
    tokens = torch.tensor([t for t, _, _ in tasks])
    with torch.no_grad():
        logprobs = torch.cat([torch.log_softmax(
            model(tokens[b:b + batch])[0][:, -6:-1].double(), -1)
            for b in range(0, len(tasks), batch)])
    target = tokens[:, -5:]
    right = logprobs.argmax(-1) == target  # [N, 5]
    p = logprobs.gather(-1, target[..., None])[..., 0].exp()
    misses = []
    for i, (_, key, at) in enumerate(tasks):
        if not right[i].all():
            d = int((~right[i]).nonzero()[0])
            misses.append(f"{key}@{at} d{d} p{p[i, d]:.2f} got "
                          f"{chr(int(logprobs[i, d].argmax()))}")
    return int(right.all(-1).sum()), misses


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m titans_torch.passkey_probe",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--model_dir", required=True, help="models to probe (comma-separated)")
    p.add_argument("--length", type=int, default=1024, help="haystack bytes")
    p.add_argument("--tasks", type=int, default=100)
    p.add_argument("--seed", type=int, default=9)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.length < 16 or args.tasks < 1:
        p.error("--length must be at least 16 and --tasks at least 1")
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    tasks = [task(rng, args.length) for _ in range(args.tasks)]
    for model_dir in args.model_dir.split(","):
        # titans_torch's attention scores a whole row at once (memory ~ rows x length^2):
        # ten rows at 1-4 KiB, fewer beyond, one from 16 KiB on.
        rows = max(1, min(10, int(1.6e8 // args.length ** 2)))
        right, misses = probe(TitansModel.load(model_dir), tasks, batch=rows)
        print(f"{model_dir}: {right}/{args.tasks}" + (": " + "; ".join(misses) if misses else ""),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
