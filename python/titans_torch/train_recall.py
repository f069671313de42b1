"""Fine-tunes a subset of a model's parameters on multi-fact recall, keeping its passkeys and its
text: the read path's stage after `titans_torch.fit_keys` has taught the recall head's keys the
facts' names (docs/evaluation.md, "Training the keys apart").

    python3 -m titans_torch.train_recall --model_dir keyed --out recall \
        --data data/english.txt,data/kjv.txt --params 'layers\\.1\\.' --steps 150

A step is a batch of --batch multi-fact tasks in titans-eval's format (2-8 facts, a filler of
one of --gaps bytes, 30% of the fillers RULER's noise, the rest training text), or every
--passkey_every-th step one passkey stream of --pk_len or half as many bytes of training text
(or, a --noise_fraction of them, of RULER's noise); optionally every --short_noise_every-th
step a batch of --batch short passkey tasks in the noise (their answers' loss alone);
the loss is the answers' digits plus --lm_weight times the filler's text (bytes of the noise are
not scored), read from a fresh state in pieces of 2,048 bytes with the gradient flowing through
the memory across them; Adam on the parameters --params names (a regular expression over names
like layers.1.memory.q_proj.weight), gradient norm clipped at 1, a step whose gradient is not
finite skipped. Optionally (--contrast) a contrastive term on one memory head's addressing: at
each question, the query (at '=' for the first digit, at the first digit for the second)
against the keys at every stated fact's digit, softmax over the facts at temperature --tau, the
asked fact the target (it needs that head's q/k parameters among --params to act). Optionally
(--anchor) a pull toward the starting model: the weight times the sum over the trained tensors
of their squared change relative to their starting size.

Every --eval_every steps it prints the facts recalled exactly (greedy, teacher-forced) of 20
four-fact tasks per filler (RULER noise, the licence texts in /usr/share/common-licenses) and
gap (1 K, 4 K), and bits per byte on the first 16 KiB of the held-out part of the first --data
file; the evaluation draws from its own generator, so it does not change the training.
Checkpoints every --checkpoint_every steps to OUT.checkpoint.pt, beside the model directory
(written atomically: the parameters, the optimizer, the data order); `--resume` continues from
there, the same as an uninterrupted run. Deterministic for a given --threads.
"""
from __future__ import annotations

import argparse
import glob
import math
import os
import random
import re
import sys
import time
from typing import List

import torch
import torch.nn.functional as F

from titans_torch import passkey
from titans_torch.model import BOS, TitansModel, memory_head_share, memory_heads
from titans_torch.train_gate import passkey_stream, stream_nats
from titans_torch.write_gate import read_training_texts, resolve_head, save_with_command


def byte_counts(p: argparse.ArgumentParser, flag: str, value: str, least: int) -> List[int]:
    """A flag's comma-separated byte counts, each at least `least` (p.error otherwise)."""
    try:
        counts = [int(n) for n in value.split(",")]
    except ValueError:
        p.error(f"{flag} must be comma-separated byte counts, not {value!r}")
    if not counts or min(counts) < least:
        p.error(f"{flag} must be byte counts >= {least}")
    return counts


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python3 -m titans_torch.train_recall",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--model_dir", required=True, help="model to start from")
    p.add_argument("--out", required=True, help="directory of the new model")
    p.add_argument("--data", required=True,
                   help="training text files (comma-separated; the first also gives the "
                        "held-out bytes of the evaluation)")
    p.add_argument("--params", default=r"layers\.1\.memory\.",
                   help="regular expression over parameter names: which ones train")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch", type=int, default=4, help="recall tasks per step")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lm_weight", type=float, default=1.0,
                   help="weight of the filler's text loss")
    p.add_argument("--passkey_every", type=int, default=4,
                   help="every Nth step is one passkey stream instead (0: never)")
    p.add_argument("--pk_len", type=int, default=16384,
                   help="bytes of the longest passkey stream")
    p.add_argument("--noise_fraction", type=float, default=0.0,
                   help="share of the passkey streams in RULER's noise haystack, not text")
    p.add_argument("--short_noise_every", type=int, default=0,
                   help="every Nth step (0: never; a --passkey_every step takes precedence) is "
                        "a batch of --batch passkey tasks in RULER's noise, of one of "
                        "--short_noise_lengths bytes")
    p.add_argument("--short_noise_lengths", default="1024,2048,4096",
                   help="their lengths in bytes to draw from")
    p.add_argument("--gaps", default="256,1024,2048,4096", help="filler bytes to draw from")
    p.add_argument("--question_gaps", default="0",
                   help="bytes of filler between consecutive questions to draw from, one draw "
                        "per step (0 alone: the questions follow each other, no draw made)")
    p.add_argument("--contrast", type=float, default=0.0,
                   help="weight of the contrastive term")
    p.add_argument("--tau", type=float, default=0.1, help="its temperature")
    p.add_argument("--anchor", type=float, default=0.0,
                   help="weight of the trained tensors' squared relative change from the start")
    p.add_argument("--layer", type=int, default=1, help="the memory layer of the contrasted head")
    p.add_argument("--head", default="0",
                   help="the contrasted head (0-based), or 'auto': the recall head, as "
                        "fit_keys --head auto picks it")
    p.add_argument("--only_head", action="store_true",
                   help="of --layer's memory tensors, train only --head's rows (its slices of "
                        "the projections, convolutions, gates, initial weights and output): the "
                        "other heads keep their weights exactly")
    p.add_argument("--eval_every", type=int, default=25, help="0: no evaluation")
    p.add_argument("--checkpoint_every", type=int, default=25)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--resume", action="store_true", help="continue from OUT.checkpoint.pt")
    args = p.parse_args(argv)
    if args.steps < 1 or args.batch < 1 or args.checkpoint_every < 1:
        p.error("--steps, --batch and --checkpoint_every must be at least 1")
    if args.anchor < 0 or args.contrast < 0:
        p.error("--anchor and --contrast must be >= 0")
    if not 0 <= args.noise_fraction <= 1:
        p.error("--noise_fraction must be in [0, 1]")
    args.gap_choices = byte_counts(p, "--gaps", args.gaps, 0)
    args.question_gap_choices = byte_counts(p, "--question_gaps", args.question_gaps, 0)
    if args.short_noise_every < 0:
        p.error("--short_noise_every must be >= 0")
    args.short_noise_choices = byte_counts(p, "--short_noise_lengths", args.short_noise_lengths,
                                           256)
    try:
        re.compile(args.params)
    except re.error as e:
        p.error(f"--params is not a regular expression: {e}")
    return args


def parameter_name(name: str) -> str:
    """A parameter's name as --params sees it: layers.1.memory.q_proj.weight."""
    return name.replace("params.", "").replace("__", ".")


def head_mask(model: TitansModel, name: str, layer: int, head: int):
    """A 0/1 tensor shaped like parameter `name` that is 1 on memory head `head`'s share of it,
    for a tensor of layer `layer`'s memory (None for any other tensor): rows of the [H*dh, .]
    projections, convolutions, output gate and norm, columns of out_proj, the head's row and bias
    of each gate, its slice of the initial memory weights (memory_head_share)."""
    if not name.startswith(f"layers.{layer}.memory."):
        return None
    axis, width = memory_head_share(name, model.config["head_dim"])
    mask = torch.zeros_like(model.p(name))
    mask.narrow(axis, head * width, width).fill_(1)
    return mask


def recall_task(rng: random.Random, pairs: int, gap: int, source, question_gap: int = 0):
    """One task as (bytes, answer offsets, the filler's byte range scored as text, or (0, 0) in
    the noise, the order asked); source None is the noise. question_gap: filler bytes between
    the questions (not scored as text)."""
    text, answers, order, filler = passkey.recall_task(rng, pairs, gap, source, question_gap)
    return list(text), answers, filler if source is not None else (0, 0), order


class Trainer:
    """The model, the trained parameters, and the observer the contrastive term reads."""

    def __init__(self, model: TitansModel, args):
        self.model, self.args = model, args
        self.observed = []  # (q, k) of args.layer per forward piece, while observing
        for name, tensor in model.named_parameters():
            tensor.requires_grad_(bool(re.search(args.params, parameter_name(name))))
        self.trained = [t for t in model.parameters() if t.requires_grad]
        if args.only_head:
            for name, tensor in model.named_parameters():
                if tensor.requires_grad:
                    mask = head_mask(model, parameter_name(name), args.layer, args.head)
                    if mask is not None:
                        tensor.register_hook(lambda grad, mask=mask: grad * mask)
        # The starting values and their squared sizes (1 for a tensor that starts at zero), for
        # --anchor; taken before a resume overwrites the parameters.
        self.start = [t.detach().clone() for t in self.trained]
        self.start_sizes = [t0.pow(2).sum().item() or 1.0 for t0 in self.start]

    def anchor_loss(self) -> torch.Tensor:
        """Sum over the trained tensors of |t - t0|^2 / |t0|^2 (a tensor that starts at zero
        counts its absolute change): a pull toward the starting model, scale-free per tensor."""
        return sum((t - t0).pow(2).sum() / size
                   for t, t0, size in zip(self.trained, self.start, self.start_sizes))

    def observe(self, layer, x, q, k, out):
        if layer == self.args.layer:
            self.observed.append((q, k))

    def score(self, rows, answer_rows, text_ranges):
        """Rows of bytes (equal lengths) read from a fresh state: (nats [B, N], answer mask,
        text mask, logits). Row byte j is predicted at index j (<|bos|> comes first)."""
        self.observed.clear()
        nats, logits = stream_nats(self.model, torch.tensor([[BOS] + r for r in rows]))
        is_answer = torch.zeros_like(nats, dtype=torch.bool)
        is_text = torch.zeros_like(is_answer)
        for r, (answers, (begin, end)) in enumerate(zip(answer_rows, text_ranges)):
            is_answer[r, answers] = True
            is_text[r, begin:end] = True
        return nats, is_answer, is_text, logits

    def contrastive_loss(self, rows_answers, orders, pairs: int) -> torch.Tensor:
        """Mean over rows and the two digits of CE(softmax_facts(q . k / tau), asked fact) for
        the contrasted head: the query at the question's '=' (first digit) or first digit
        (second) against the keys at each stated fact's first or second digit (byte
        passkey.value_offset(i) + d: input position one more, after <|bos|>)."""
        H, dh = memory_heads(self.model.config, self.args.layer), self.model.config["head_dim"]
        q = torch.cat([p[0] for p in self.observed], 1)
        k = torch.cat([p[1] for p in self.observed], 1)
        B, T = q.shape[:2]
        q = q.view(B, T, H, dh)[:, :, self.args.head]
        k = k.view(B, T, H, dh)[:, :, self.args.head]
        losses = []
        for r in range(B):
            for d in (0, 1):
                keys = k[r, [passkey.value_offset(i) + 1 + d for i in range(pairs)]]  # [pairs, dh]
                queries = q[r, [rows_answers[r][2 * j] + d for j in range(pairs)]]  # [pairs, dh]
                losses.append(F.cross_entropy(queries @ keys.t() / self.args.tau,
                                              torch.tensor(orders[r])))
        return torch.stack(losses).mean()

    def evaluate(self, licences: str, held_out: str) -> dict:
        """Facts recalled exactly (greedy, teacher-forced) of 20 four-fact tasks per filler and
        gap, and bits per byte on the first 16 KiB of `held_out`."""
        eval_rng, results = random.Random(1234), {}
        with torch.no_grad():
            for filler_name, source in (("noise", None), ("lic", licences)):
                for gap in (1024, 4096):
                    right = asked = 0
                    for _ in range(5):
                        rows, answers, _, _ = zip(*[recall_task(eval_rng, 4, gap, source)
                                                    for _ in range(4)])
                        _, _, _, logits = self.score(list(rows), list(answers), [(0, 0)] * 4)
                        predicted = logits.argmax(-1)
                        for r in range(4):
                            for f in range(0, 8, 2):
                                first, second = answers[r][f], answers[r][f + 1]
                                right += int(predicted[r, first] == rows[r][first] and
                                             predicted[r, second] == rows[r][second])
                                asked += 1
                    results[f"{filler_name}{gap}"] = f"{right}/{asked}"
            held = held_out[:16384].encode("utf-8", "replace")[:16384]
            nats, _, _, _ = self.score([list(held)], [[]], [(0, 0)])
            results["heldout_bpb"] = round(nats.mean().item() / math.log(2), 4)
        return results

    def step(self, rng: random.Random, texts, optimizer, step: int) -> str:
        """One training step; returns its log line."""
        args, model = self.args, self.model
        began = time.time()
        optimizer.zero_grad()
        if args.passkey_every and step % args.passkey_every == args.passkey_every - 1:
            length = rng.choice([args.pk_len // 2, args.pk_len])
            tokens, is_text, is_answer = passkey_stream(rng, texts, length, args.noise_fraction)
            nats = stream_nats(model, torch.tensor([tokens]))[0][0]
            answer, text = nats[is_answer].mean(), nats[is_text].mean()
            kind = "pk"
        elif args.short_noise_every and step % args.short_noise_every == args.short_noise_every - 1:
            # A batch of short passkeys in the noise: the greedy check there fails on a few keys
            # (mostly ones with a repeated digit) that one long stream per step rarely draws.
            length = rng.choice(args.short_noise_choices)
            rows = [passkey_stream(rng, texts, length, 1.0) for _ in range(args.batch)]
            nats = stream_nats(model, torch.tensor([tokens for tokens, _, _ in rows]))[0]
            answer = nats[torch.stack([is_answer for _, _, is_answer in rows])].mean()
            text = torch.zeros(())
            kind = f"pkn{length}"
        else:
            pairs = rng.randrange(2, 9)
            gap = rng.choice(args.gap_choices)
            question_gap = (0 if args.question_gap_choices == [0] else
                            rng.choice(args.question_gap_choices))
            tasks = [recall_task(rng, pairs, gap, passkey.filler_source(rng, texts), question_gap)
                     for _ in range(args.batch)]
            rows, answers, text_ranges, orders = zip(*tasks)
            model.memory_observer = self.observe if args.contrast else None
            nats, is_answer, is_text, _ = self.score(list(rows), list(answers), list(text_ranges))
            model.memory_observer = None
            answer = nats[is_answer].mean()
            text = nats[is_text].mean() if is_text.any() else torch.zeros(())
            kind = f"mf{pairs}x{gap}" + (f"q{question_gap}" if question_gap else "")
            if args.contrast:  # the printed answer loss then includes the weighted term
                contrast = self.contrastive_loss(answers, orders, pairs)
                answer = answer + args.contrast * contrast
                kind += f" c{contrast.item():.3f}"
        loss = answer + args.lm_weight * text
        if args.anchor:
            anchor = self.anchor_loss()
            loss = loss + args.anchor * anchor
            kind += f" a{anchor.item():.2e}"
        loss.backward()
        finite = all(torch.isfinite(t.grad).all() for t in self.trained if t.grad is not None)
        if finite:
            torch.nn.utils.clip_grad_norm_(self.trained, 1.0)
            optimizer.step()
        return (f"step {step + 1} {kind} ans {answer.item():.3f} txt "
                f"{text.item() / math.log(2):.3f} {'' if finite else 'SKIP'} "
                f"{time.time() - began:.1f}s")


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = TitansModel.load(args.model_dir)
    checkpoint = os.path.normpath(args.out) + ".checkpoint.pt"
    try:
        texts, held_out = read_training_texts(args.data)
        args.head = resolve_head(model, args.layer, args.head)
        if args.resume and not os.path.exists(checkpoint):
            raise ValueError(f"--resume: no checkpoint {checkpoint}")
    except (ValueError, OSError) as e:
        print(f"train_recall: {e}", file=sys.stderr)
        return 2
    licences = "".join(open(f, encoding="utf-8", errors="replace").read() for f in sorted(
        glob.glob("/usr/share/common-licenses/*")) if not re.search(r"/(GFDL|GPL|LGPL)$", f))
    trainer = Trainer(model, args)
    if not trainer.trained:
        print(f"train_recall: --params {args.params!r} names no parameter", file=sys.stderr)
        return 2
    print("training", len(trainer.trained), "tensors",
          sum(t.numel() for t in trainer.trained), "numbers", flush=True)
    optimizer = torch.optim.Adam(trainer.trained, lr=args.lr)
    rng = random.Random(args.seed)
    first = 0
    if args.resume:
        saved = torch.load(checkpoint, weights_only=False)
        with torch.no_grad():
            for name, tensor in model.named_parameters():
                tensor.copy_(saved["parameters"][name])
        optimizer.load_state_dict(saved["optimizer"])
        rng.setstate(saved["rng"])
        first = saved["step"]
        print(f"resumed at step {first}", flush=True)
    elif args.eval_every:
        print("step 0", trainer.evaluate(licences, held_out[0]), flush=True)
    os.makedirs(os.path.dirname(checkpoint) or ".", exist_ok=True)
    for step in range(first, args.steps):
        print(trainer.step(rng, texts, optimizer, step), flush=True)
        if args.eval_every and (step + 1) % args.eval_every == 0:
            print("eval", step + 1, trainer.evaluate(licences, held_out[0]), flush=True)
        if (step + 1) % args.checkpoint_every == 0 or step + 1 == args.steps:
            torch.save({"step": step + 1, "optimizer": optimizer.state_dict(),
                        "rng": rng.getstate(),
                        "parameters": {n: t.detach().clone()
                                       for n, t in model.named_parameters()}},
                       checkpoint + ".tmp")
            os.replace(checkpoint + ".tmp", checkpoint)
    for tensor in trainer.trained:
        tensor.requires_grad_(False)
    save_with_command(model, args.out, "train_recall", argv)
    print(f"wrote {args.out}: {len(trainer.trained)} tensors trained for {args.steps} steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
