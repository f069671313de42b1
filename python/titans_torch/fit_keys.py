"""Refits one memory head's queries and keys so that a question's query picks the asked fact's
key among the facts a session was told (docs/evaluation.md, "Training the keys apart").

    python3 -m titans_torch.fit_keys --model_dir models/default --out keyed \
        --data data/english.txt,data/kjv.txt --layer 1 --head auto --tasks 100 --iters 150 --own 1

Records the layer's memory input (after its RMSNorm) on --tasks multi-fact recall tasks (2-8
facts, 256 or 1,024 bytes of filler, 30% RULER noise, 70% training text; a passkey needle and
question after them), then refits only the head's rows of q_proj, k_proj, q_conv and k_conv
offline (Adam over all recorded tasks per iteration) to minimise, at each question, the
cross-entropy of softmax(q . k / tau) over the stated facts' keys (the query at '=' against the
keys at each fact's first value digit, and one byte later for the second digit), plus --own
times 1 - q.k with the asked fact's key, plus --others times the squared q . k with every other
fact's key, plus --keep_passkeys times the squared change of a passkey's reads (the unit queries
before its answer digits and the keys at the needle's digits; it prints how well those queries
pick their digit's keys, softmax over the needle's ten), plus --keep times the squared change of
the head's unit keys and queries at 64 random filler bytes and at the needle and question of
each task (so what the head does on text and passkeys stays where it was). With --with_head H
the contrastive term is that of the mean of this head's softmax and head H's (H's rows
unchanged): this head learns to address the facts that H confuses. With --answer_negatives a
question's candidates also include the keys of the earlier questions' answers (restatements
written just before it); the cosines printed include the query's with the previous question's
fact and with its answer. The rest of the model is unchanged. Prints, on another 60 tasks (seed
99) before and after, the contrastive loss, how often the own fact's key scores highest, and the
cosines of query and keys, own and other, as unit vectors and as the memory's hidden codes
SiLU(W1 x) under the session's own W1.
Deterministic for a given --threads; about 6 minutes on two cores.
"""
from __future__ import annotations

import argparse
import math
import random
import sys
import time
from typing import List, NamedTuple

import torch
import torch.nn.functional as F

from titans_torch import passkey
from titans_torch.model import BOS, TitansModel
from titans_torch.write_gate import (add_head_arguments, read_training_texts, resolve_head,
                                     save_with_command)

QK_ROWS = ("q_proj.weight", "k_proj.weight", "q_conv.weight", "k_conv.weight")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python3 -m titans_torch.fit_keys",
                                description=__doc__.split("\n\n")[0])
    add_head_arguments(p)
    p.add_argument("--data", required=True, help="training text files (comma-separated)")
    p.add_argument("--tasks", type=int, default=100, help="recorded tasks the fit sees")
    p.add_argument("--tau", type=float, default=0.1, help="softmax temperature over q . k")
    p.add_argument("--keep", type=float, default=10.0,
                   help="weight of the change of the keys and queries the fit must leave alone")
    p.add_argument("--own", type=float, default=0.0,
                   help="weight of 1 - q . k with the own fact's key")
    p.add_argument("--others", type=float, default=0.0,
                   help="weight of the squared cosine of a question's query with the other "
                        "facts' keys (what a linear read mixes in from them)")
    p.add_argument("--answer_negatives", action="store_true",
                   help="contrast a question's query with the keys of the earlier questions' "
                        "answers too (restatements of other facts, written just before it)")
    p.add_argument("--keep_passkeys", type=float, default=0.0,
                   help="weight of the change of a passkey's reads: the queries before its "
                        "answer digits and the keys at the needle's digits")
    p.add_argument("--with_head", type=int, default=None,
                   help="another head of the layer, left as it is: fit this head's addressing "
                        "together with that one's, so that the pair's mean softmax picks the "
                        "asked fact (this head learns the questions the other gets wrong)")
    p.add_argument("--iters", type=int, default=150, help="Adam steps over all recorded tasks")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if args.tasks < 1 or args.iters < 1:
        p.error("--tasks and --iters must be at least 1")
    if args.tau <= 0:
        p.error("--tau must be positive")
    return args


def task(rng: random.Random, pairs: int, gap: int, source):
    """A recall task (source None: in the noise) with a passkey needle, 128 filler bytes and the
    passkey question after it (their keys and queries are held in place by the fit), and the
    key (its answer, read after the question)."""
    text, answers, order, filler = passkey.recall_task(rng, pairs, gap, source)
    key = passkey.random_key(rng)
    needle = len(text)
    text += passkey.needle(key).encode() + passkey.haystack(rng, 128, source) + \
        passkey.QUESTION.encode()
    return list(text), answers, order, filler, (needle, len(text)), key


def needle_digits(needle: int, key: str):
    """The byte offsets of the key's digits in a needle that starts at byte `needle`: the first
    occurrence's five, then the second's."""
    text = passkey.needle(key)
    first = needle + len(" The pass key is ")
    second = needle + text.index(f" {key} is the pass key") + 1
    return [first + i for i in range(len(key))] + [second + i for i in range(len(key))]


class Recorded(NamedTuple):
    """One recorded task: conv input windows [N, taps, d] at the positions the fit reads."""
    keys: torch.Tensor  # each fact's first value digit, then each fact's second
    queries: torch.Tensor  # each question's '=', then its first digit, in question order
    order: List[int]  # question j asks fact order[j]
    pairs: int
    kept: torch.Tensor  # 64 filler bytes, the needle and the question
    w1: torch.Tensor  # the session's memory W1 of the head at the question [hidden, dh]
    passkey_keys: torch.Tensor  # the needle's ten digits
    passkey_queries: torch.Tensor  # the bytes before the five answer digits
    answer_keys: torch.Tensor  # each answer's first digit, then its second, in question order


class KeyFit:
    """The recorded tasks of one head, and the losses of its q/k rows on them."""

    def __init__(self, model: TitansModel, layer: int, head: int, args):
        self.model, self.layer, self.head, self.args = model, layer, head, args
        self.dh = model.config["head_dim"]
        self.rows = slice(head * self.dh, (head + 1) * self.dh)
        self.prefix = f"layers.{layer}.memory."
        self.taps = model.p(self.prefix + "k_conv.weight").shape[1]
        self.recorded = {}

    def record_input(self, layer, x, q, k, out):
        if layer == self.layer:
            self.recorded["x"] = x[0]  # the memory's input after its RMSNorm [T, d]

    def windows(self, x, positions):
        """The conv's input windows [N, taps, d] ending at the input positions (zeros before
        0)."""
        index = torch.tensor(positions)[:, None] + torch.arange(1 - self.taps, 1)[None, :]
        return x[index.clamp_min(0)] * (index >= 0)[..., None]

    def collect(self, texts, count: int, seed: int):
        """Per task: key windows (each fact's first, then second digit), query windows (each
        question's '=' then first digit, in question order), the order, the fact count, the
        windows to keep (64 filler bytes, the needle, the question) and the session's W1 at
        the end."""
        rng, data = random.Random(seed), []
        self.model.memory_observer = self.record_input
        with torch.no_grad():
            for _ in range(count):
                pairs, gap = rng.randrange(2, 9), rng.choice([256, 1024])
                source = passkey.filler_source(rng, texts)
                text, answers, order, (begin, end), (needle, question_end), key = task(
                    rng, pairs, gap, source)
                _, state = self.model(torch.tensor([[BOS] + text]), None)
                x = self.recorded["x"]
                w1 = state.layers[self.layer].weights[0][0, self.head]  # [hidden, dh]
                # The key read after the question (a second call, so that the recorded task
                # before it is what it was without it).
                self.model(torch.tensor([list(key.encode())]), state)
                x_all = torch.cat([x, self.recorded["x"]], 0)
                # Answer digit i is predicted at input position question_end + i (the byte
                # before it, after <|bos|>); its keys are at the needle's digits i.
                passkey_keys = self.windows(x_all, [at + 1 for at in needle_digits(needle, key)])
                passkey_queries = self.windows(x_all, [question_end + i for i in range(len(key))])
                # Input position = byte offset + 1 (<|bos|> first).
                key_at = [passkey.value_offset(i) + 1 + d for d in (0, 1) for i in range(pairs)]
                query_at = [answers[2 * j] + d for d in (0, 1) for j in range(pairs)]
                answer_at = [answers[2 * j] + 1 + d for d in (0, 1) for j in range(pairs)]
                keep_at = rng.sample(range(begin + 4, end), 64) + list(
                    range(needle + 2, question_end + 1))
                data.append(Recorded(self.windows(x, key_at), self.windows(x, query_at), order,
                                     pairs, self.windows(x, keep_at), w1, passkey_keys,
                                     passkey_queries, self.windows(x, answer_at)))
        self.model.memory_observer = None
        return data

    def current_rows(self, head=None):
        """The q/k rows of this head (or of `head` of the same layer), detached copies."""
        rows = self.rows if head is None else slice(head * self.dh, (head + 1) * self.dh)
        return {name: self.model.p(self.prefix + name)[rows].detach().clone()
                for name in QK_ROWS}

    @staticmethod
    def unit_rows(window, rows, which):
        """The head's unit query or key rows for input windows: L2norm(SiLU(depthwise conv of
        the projection)), as the model computes them."""
        projected = (window @ rows[which + "_proj.weight"].t() *
                     rows[which + "_conv.weight"].t()[None])
        return F.normalize(F.silu(projected.sum(1)), dim=-1)

    def passkey_change(self, data, rows, start):
        """Mean over tasks of the squared change from `start` of the passkey's unit keys (the
        needle's digits) and queries (before the answer digits): what --keep_passkeys holds."""
        def moved(windows, which):
            return (self.unit_rows(windows, rows, which) -
                    self.unit_rows(windows, start, which)).pow(2).sum(-1).mean()
        change = 0.0
        for task in data:
            change = change + (moved(task.passkey_keys, "k") + moved(task.passkey_queries, "q"))
        return change / len(data)

    def passkey_addressing(self, data, rows):
        """(mean over answer digits of -log of the softmax(q . k / tau) mass on the needle's
        two keys of that digit among its ten digit keys, share of digits whose highest-scoring
        key is one of the two): printed, not fitted."""
        loss, right, digits = 0.0, 0, 0
        for task in data:
            keys = self.unit_rows(task.passkey_keys, rows, "k")  # [10, dh]
            queries = self.unit_rows(task.passkey_queries, rows, "q")  # [5, dh]
            logits = queries @ keys.t() / self.args.tau  # [5, 10]
            n = queries.shape[0]
            own = torch.cat([torch.eye(n, dtype=torch.bool)] * 2, 1)
            loss = loss + (logits.logsumexp(1) -
                           logits.masked_fill(~own, float("-inf")).logsumexp(1)).sum()
            right += int(own[torch.arange(n), logits.argmax(1)].sum())
            digits += n
        return loss / digits, right / digits

    def passkey_report(self, data, rows, start) -> str:
        """passkey_addressing and passkey_change, as one line."""
        loss, right = self.passkey_addressing(data, rows)
        return (f"loss {loss:.3f} acc {right:.3f} change "
                f"{self.passkey_change(data, rows, start):.5f}")

    def addressing(self, task, rows):
        """A task's cosines q . k under `rows`, one [pairs, C] per digit (first, second): each
        question's unit query against the stated facts' unit keys (C = pairs), and with
        --answer_negatives against the earlier questions' answers' keys too (C = 2 pairs; the
        later answers' entries -inf, so that they drop out of a softmax)."""
        pairs = task.pairs
        keys = self.unit_rows(task.keys, rows, "k")
        queries = self.unit_rows(task.queries, rows, "q")
        answers = (self.unit_rows(task.answer_keys, rows, "k")
                   if self.args.answer_negatives else None)
        earlier = torch.ones(pairs, pairs, dtype=torch.bool).tril(-1)  # answer i < question j
        cosines = []
        for d in (0, 1):
            digit = slice(d * pairs, (d + 1) * pairs)
            found = queries[digit] @ keys[digit].t()
            if answers is not None:
                found = torch.cat([found, (queries[digit] @ answers[digit].t()).masked_fill(
                    ~earlier, float("-inf"))], 1)
            cosines.append(found)
        return cosines

    def losses(self, data, rows, start, partner=None):
        """(contrastive loss per question (+ --own term), share of questions whose own fact's
        key scores highest, mean squared change of the kept keys and queries from `start`).
        With `partner` (another head's rows, fixed), the loss and the share are those of the
        mean of the two heads' softmaxes (--with_head)."""
        contrast, right, questions, change = 0.0, 0, 0, 0.0
        for task in data:
            pairs = task.pairs
            target = torch.tensor(task.order)
            own_cosines = self.addressing(task, rows)
            partner_cosines = None if partner is None else self.addressing(task, partner)
            for d in (0, 1):
                facts = own_cosines[d][:, :pairs]  # [question, fact]
                logits = own_cosines[d] / self.args.tau
                if partner_cosines is not None:
                    # log of the mean of the two softmaxes: the pair's addressing.
                    logits = torch.logaddexp(
                        logits.log_softmax(1),
                        (partner_cosines[d] / self.args.tau).log_softmax(1)) - math.log(2)
                contrast = contrast + F.cross_entropy(logits, target, reduction="sum")
                contrast = contrast + self.args.own * (
                    1 - facts[torch.arange(pairs), target]).sum()
                if self.args.others:
                    others = facts.masked_fill(F.one_hot(target, pairs).bool(), 0.0)
                    contrast = contrast + self.args.others * others.pow(2).sum()
                right += int((logits.argmax(1) == target).sum())
                questions += pairs
            for which in ("k", "q"):
                change = change + (self.unit_rows(task.kept, rows, which) -
                                   self.unit_rows(task.kept, start, which)).pow(2).sum(
                                       -1).mean()
        return contrast / questions, right / questions, change / len(data)

    def overlaps(self, data, rows):
        """Mean cosine of the query with its own fact's key and with the others' (first
        digits), as unit vectors (q . k), and as the memory's hidden codes SiLU(W1 x) under the
        session's own W1 (what the W2 part of a write's effect on a read follows)."""
        found = {"qk own": [], "qk other": [], "hidden own": [], "hidden other": [],
                 "qk previous question's fact": [], "qk previous answer": []}
        for task in data:
            pairs, order = task.pairs, task.order
            k = self.unit_rows(task.keys, rows, "k")[:pairs]
            q = self.unit_rows(task.queries, rows, "q")[:pairs]
            answers = self.unit_rows(task.answer_keys, rows, "k")[:pairs]
            found["qk previous question's fact"].append((q[1:] * k[order[:-1]]).sum(-1))
            found["qk previous answer"].append((q[1:] * answers[:-1]).sum(-1))
            hidden_k = F.normalize(F.silu(k @ task.w1.t()), dim=-1)
            hidden_q = F.normalize(F.silu(q @ task.w1.t()), dim=-1)
            own = torch.zeros(pairs, pairs, dtype=torch.bool)
            own[torch.arange(pairs), torch.tensor(order)] = True
            for name, cosines in (("qk", q @ k.t()), ("hidden", hidden_q @ hidden_k.t())):
                found[name + " own"].append(cosines[own])
                found[name + " other"].append(cosines[~own])
        return ", ".join(f"{name} {torch.cat(v).mean():.3f}" for name, v in found.items())


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model = TitansModel.load(args.model_dir)
    try:
        head = resolve_head(model, args.layer, args.head)
        if args.with_head is not None:
            if resolve_head(model, args.layer, str(args.with_head)) == head:
                raise ValueError(f"--with_head {head} is the head being fitted")
        texts, _ = read_training_texts(args.data)
    except (ValueError, OSError) as e:
        print(f"fit_keys: {e}", file=sys.stderr)
        return 2
    fit = KeyFit(model, args.layer, head, args)
    partner = None if args.with_head is None else fit.current_rows(args.with_head)
    began = time.time()
    fit_tasks, held_out_tasks = fit.collect(texts, args.tasks, 1), fit.collect(texts, 60, 99)
    print(f"collected in {time.time() - began:.0f}s", flush=True)
    start = fit.current_rows()
    fitted = {name: t.clone().requires_grad_(True) for name, t in start.items()}
    with torch.no_grad():
        contrast, right, _ = fit.losses(held_out_tasks, start, start)
        print(f"before: val contrast {contrast:.3f} acc {right:.3f}", flush=True)
        if partner is not None:
            contrast, right, _ = fit.losses(held_out_tasks, partner, partner)
            print(f"head {args.with_head} alone: val contrast {contrast:.3f} acc {right:.3f}",
                  flush=True)
            contrast, right, _ = fit.losses(held_out_tasks, start, start, partner)
            print(f"before, with head {args.with_head}: val contrast {contrast:.3f} acc "
                  f"{right:.3f}", flush=True)
        print("before, held-out passkey digits:", fit.passkey_report(held_out_tasks, start, start),
              flush=True)
        print("before, held-out cosines (first digits):", fit.overlaps(held_out_tasks, start),
              flush=True)
    optimizer = torch.optim.Adam(list(fitted.values()), lr=args.lr)
    for it in range(args.iters):
        optimizer.zero_grad()
        contrast, right, change = fit.losses(fit_tasks, fitted, start, partner)
        loss = contrast + args.keep * change
        if args.keep_passkeys:
            loss = loss + args.keep_passkeys * fit.passkey_change(fit_tasks, fitted, start)
        loss.backward()
        optimizer.step()
        if it % 25 == 0 or it == args.iters - 1:
            with torch.no_grad():
                val_contrast, val_right, val_change = fit.losses(held_out_tasks, fitted, start,
                                                                 partner)
            print(f"it {it} train c {contrast.item():.3f} acc {right:.3f} keep "
                  f"{change.item():.4f} | val c {val_contrast:.3f} acc {val_right:.3f} keep "
                  f"{val_change:.4f}", flush=True)
    with torch.no_grad():
        if partner is not None:
            contrast, right, _ = fit.losses(held_out_tasks, fitted, start)
            print(f"after, alone: val contrast {contrast:.3f} acc {right:.3f}", flush=True)
        print("after, held-out cosines (first digits):", fit.overlaps(held_out_tasks, fitted),
              flush=True)
        print("after, held-out passkey digits:", fit.passkey_report(held_out_tasks, fitted, start),
              flush=True)
        for name, rows in fitted.items():
            model.p(fit.prefix + name)[fit.rows] = rows
    save_with_command(model, args.out, "fit_keys", argv)
    print(f"wrote {args.out}: head {head} of layer {args.layer}'s q/k rows refitted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
