#!/usr/bin/python3
"""Looks inside a model's neural memory while it reads recall tasks (docs/evaluation.md,
"Calibrating the recall head's writes"). Uses titans_torch, which matches the server to 1e-5 nats.

    scripts/memory-probe.py addressing MODEL_DIR   multi-fact: does the question's memory query
                                                   match its own fact's key better than the others?
    scripts/memory-probe.py needle MODEL_DIR       passkey in text: the needle's key against every
                                                   haystack key, per head of the last layer
    scripts/memory-probe.py trace MODEL_DIR        how much of a needle is left in the last layer's
                                                   memory read after L bytes of haystack
    scripts/memory-probe.py gates MODEL_DIR        mean forgetting (alpha), momentum (eta) and write
                                                   (theta) gates per head, on text and on noise

Text haystacks: the held-out tail of data/english.txt (never trained on), or with --licences the
licence texts scripts/evaluate-default.sh uses. Deterministic (--seed).
"""
import argparse
import glob
import os
import random
import sys

import torch
import torch.nn.functional as F

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "python"))
from titans_torch.model import TitansModel  # noqa: E402
from titans_torch.passkey import NOISE, QUESTION, needle, random_key, value_offset  # noqa: E402


def text_haystack(licences):
    if licences:
        files = [f for f in sorted(glob.glob("/usr/share/common-licenses/*"))
                 if not f.endswith(("GFDL", "GPL", "LGPL"))]
        return "".join(open(f, errors="replace").read() for f in files)
    with open(os.path.join(ROOT, "data", "english.txt"), "rb") as f:  # the last 5% is held out
        data = f.read()
    return data[len(data) - len(data) // 20:].decode("utf-8", errors="replace")


class Recorder:
    """Keeps each memory layer's queries and keys ([T, H, dh], normalised), inputs ([T, d]) and
    last output while the model reads (through TitansModel.memory_observer; one piece per read)."""

    def __init__(self, model):
        self.model, self.q, self.k, self.x, self.out = model, {}, {}, {}, {}
        H, dh = model.config["num_heads"], model.config["head_dim"]

        def observe(i, x, q, k, out):
            self.x.setdefault(i, []).append(x[0])
            self.q.setdefault(i, []).append(q[0].reshape(-1, H, dh))
            self.k.setdefault(i, []).append(k[0].reshape(-1, H, dh))
            self.out[i] = out[0]

        model.memory_observer = observe

    def clear(self):
        self.q.clear(), self.k.clear(), self.x.clear(), self.out.clear()

    def read(self, tokens, state=None, piece=4096):
        """Scores `tokens` in pieces (the attention mask of one long call would be T x T)."""
        with torch.no_grad():
            for begin in range(0, len(tokens), piece):
                _, state = self.model.score(tokens[begin:begin + piece], state)
        return state

    def rows(self, store, layer, n_tokens):
        """Layer `layer`'s rows for the last n_tokens read (dropping <|bos|>)."""
        rows = torch.cat(store[layer])
        return rows[rows.shape[0] - n_tokens:]


def addressing(model, args):
    rec, rng = Recorder(model), random.Random(args.seed)
    filler = text_haystack(args.licences) if args.filler == "text" else NOISE * 200
    L = model.config["num_layers"]
    stats, recall_rows = {}, []
    for _ in range(args.trials):
        names = []
        while len(names) < args.facts:
            name = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(3))
            if name not in names:
                names.append(name)
        values = [f"{rng.randrange(10)}{rng.randrange(10)}" for _ in names]
        text = "".join(f"{n}={v}, " for n, v in zip(names, values))
        first_digits = [value_offset(i) for i in range(args.facts)]
        start = rng.randrange(0, len(filler) - args.gap)
        text += filler[start:start + args.gap] + " Recall: "
        order = list(range(args.facts))
        rng.shuffle(order)
        asked = []
        for i in order:
            text += names[i] + "="
            asked.append((i, len(text) - 1))  # the '=' after which the first digit comes
            text += values[i] + ", "
        tokens = list(text.encode())
        rec.clear()
        rec.read(tokens)
        for layer in range(L):
            K, Q = rec.rows(rec.k, layer, len(tokens)), rec.rows(rec.q, layer, len(tokens))
            if layer == L - 1:
                recall_rows.append((K[first_digits], Q[[at for _, at in asked]], order))
            for h in range(model.config["num_heads"]):
                s = stats.setdefault((layer, h), [0, 0, 0.0, 0.0])
                for i, at in asked:
                    sims = K[first_digits, h] @ Q[at, h]
                    s[0] += int(sims.argmax().item() == i)
                    s[1] += 1
                    s[2] += sims[i].item()
                    s[3] += (sims.sum() - sims[i]).item() / (args.facts - 1)
    print(f"{args.facts} facts, {args.gap} bytes of {args.filler}, {args.trials} tasks: the query "
          "at each question's '=' against the keys at every fact's first value digit")
    print("| layer | head | own fact's key the closest | q.k own fact | q.k other facts |")
    print("|---|---|---|---|---|")
    for (layer, h), (best, n, own, other) in sorted(stats.items()):
        print(f"| {layer} | {h} | {best}/{n} | {own / n:.3f} | {other / n:.3f} |")
    # Is the name in the keys at all, under a component they share? Subtract the mean fact key
    # (and the mean question query) of the last layer's best head, renormalise, and look again.
    head = max(range(model.config["num_heads"]), key=lambda h: stats[(L - 1, h)][0])
    keys = torch.cat([k[:, head] for k, _, _ in recall_rows])
    queries = torch.cat([q[:, head] for _, q, _ in recall_rows])
    for label, mk, mq in (("keys and queries centred", keys.mean(0), queries.mean(0)),
                          ("both centred on the mean key", keys.mean(0), keys.mean(0))):
        best = 0
        for k, q, order in recall_rows:
            k = F.normalize(k[:, head] - mk, dim=-1)
            q = F.normalize(q[:, head] - mq, dim=-1)
            best += int(((q @ k.t()).argmax(-1) == torch.tensor(order)).sum().item())
        print(f"layer {L - 1} head {head}, {label}: own fact's key the closest {best}/"
              f"{len(recall_rows) * args.facts}")


def needle_vs_haystack(model, args):
    rec, rng = Recorder(model), random.Random(args.seed)
    filler = text_haystack(args.licences) if args.filler == "text" else NOISE * 3000
    last = model.config["num_layers"] - 1
    print(f"passkey in {args.filler}: the last layer's query at the question against the keys at "
          f"the needle's first digits and at every haystack byte ({args.trials} tasks per length)")
    print("| haystack | head | q.k needle | q.k haystack, mean | haystack keys at or above the "
          "needle's, per task |")
    print("|---|---|---|---|---|")
    for length in args.lengths:
        sums = {}
        for _ in range(args.trials):
            key = random_key(rng)
            n = needle(key)
            hay = length - len(n) - len(QUESTION)
            start = rng.randrange(0, len(filler) - hay)
            haystack = filler[start:start + hay]
            at = len(haystack[:int(rng.random() * 0.5 * len(haystack))].encode("utf-8", "replace"))
            tokens = list(haystack.encode("utf-8", "replace"))
            tokens = tokens[:at] + list(n.encode()) + tokens[at:] + list(QUESTION.encode())
            digits = [at + n.index(key), at + n.rindex(key)]
            rec.clear()
            rec.read(tokens)
            K, Q = rec.rows(rec.k, last, len(tokens)), rec.rows(rec.q, last, len(tokens))
            hay_mask = torch.ones(len(tokens), dtype=torch.bool)
            hay_mask[at:at + len(n)] = False
            hay_mask[len(tokens) - len(QUESTION):] = False
            for h in range(model.config["num_heads"]):
                sims = K[:, h] @ Q[-1, h]
                best = sims[digits].max().item()
                s = sums.setdefault(h, [0.0, 0.0, 0.0])
                s[0] += best
                s[1] += sims[hay_mask].mean().item()
                s[2] += (sims[hay_mask] >= best).sum().item()
        for h, (best, mean, above) in sorted(sums.items()):
            t = args.trials
            print(f"| {length} | {h} | {best / t:.3f} | {mean / t:.3f} | {above / t:.1f} |")


def trace(model, args):
    if args.no_forgetting:  # alpha ~ 0 in every memory head
        with torch.no_grad():
            for i in range(model.config["num_layers"]):
                model.p(f"layers.{i}.memory.alpha_proj.bias").sub_(30)
    if args.no_bound:
        model.config["memory"]["max_weight_rms"] = 0.0
    rec, rng = Recorder(model), random.Random(args.seed)
    last = model.config["num_layers"] - 1
    fillers = {"text": text_haystack(args.licences), "noise": NOISE * 3000}
    print("two sessions that differ only in the key (71432 / 58209), the same haystack after it: "
          "the last layer's memory output at the question's last byte, |a - b| / |a|, and "
          "log p(first digit)")
    print("| haystack | bytes after the needle | read difference | log p, key a | log p, key b |")
    print("|---|---|---|---|---|")
    for kind in (args.filler,) if args.filler != "both" else ("text", "noise"):
        filler = fillers[kind]
        start = rng.randrange(0, len(filler) - args.lengths[-1] - 1)
        hay = list(filler[start:start + args.lengths[-1]].encode("utf-8", "replace"))
        hay = hay[:args.lengths[-1]]
        seen = {}
        for key in ("71432", "58209"):
            state = rec.read(list(b"Notes. ") + list(needle(key).encode()))
            done = 0
            for length in args.lengths:
                state = rec.read(hay[done:length], state)
                done = length
                with torch.no_grad():
                    logp, _ = model.score(list(QUESTION.encode()) + [ord(key[0])], state)
                seen[(key, length)] = (rec.out[last][-2].clone(), logp[-1])
        for length in args.lengths:
            (a, la), (b, lb) = seen[("71432", length)], seen[("58209", length)]
            print(f"| {kind} | {length} | {((a - b).norm() / a.norm()).item():.3f} | {la:.2f} | "
                  f"{lb:.2f} |")


def gates(model, args):
    """Mean gates per head over 8 KiB of text, of noise, over a passkey's ten digits planted in
    that text (the key told twice), and over the text's own digits."""
    rec = Recorder(model)
    text = text_haystack(args.licences)[:8192]
    key = "71432"
    planted = text[:4096] + needle(key) + text[4096:]
    at = len(planted[:4096].encode("utf-8", "replace"))
    digits = [at + needle(key).index(key) + j for j in range(len(key))]
    digits += [at + needle(key).rindex(key) + j for j in range(len(key))]
    text_digits = [i for i, b in enumerate(text.encode("utf-8", "replace"))
                   if ord("0") <= b <= ord("9")]
    inputs = {"text": (text, None), "noise": ((NOISE * 100)[:8192], None),
              "key digits in text": (planted, digits)}
    if text_digits:  # the digits the text itself holds (what erases keys: docs/evaluation.md)
        inputs["the text's own digits"] = (text, text_digits)
    print("| input | layer | head | alpha per byte | kept after 64 K bytes | eta | theta |")
    print("|---|---|---|---|---|---|---|")
    for name, (body, rows) in inputs.items():
        tokens = list(body.encode("utf-8", "replace"))
        rec.clear()
        rec.read(tokens)
        for i in sorted(rec.x):
            x = torch.cat(rec.x[i])[-len(tokens):]
            with torch.no_grad():
                log_keep, log_eta, theta = model.gates(i, x)  # [T, H]
            if rows is not None:
                log_keep, log_eta, theta = log_keep[rows], log_eta[rows], theta[rows]
            for h in range(model.config["num_heads"]):
                alpha = -log_keep[:, h].mean().item()
                kept = torch.exp(-torch.tensor(alpha * 65536)).item()
                print(f"| {name} | {i} | {h} | {alpha:.2e} | {kept:.3f} | "
                      f"{log_eta[:, h].exp().mean().item():.3f} | "
                      f"{theta[:, h].mean().item():.4f} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("probe", choices=["addressing", "needle", "trace", "gates"])
    p.add_argument("model_dir")
    p.add_argument("--filler", default=None, help="text or noise (trace: also both)")
    p.add_argument("--licences", action="store_true", help="text haystack: the licence texts")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--facts", type=int, default=4)
    p.add_argument("--gap", type=int, default=1024)
    p.add_argument("--lengths", default=None, help="comma-separated haystack lengths in bytes")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--no_forgetting", action="store_true", help="trace: alpha ~ 0 everywhere")
    p.add_argument("--no_bound", action="store_true", help="trace: no memory weight bound")
    args = p.parse_args()
    defaults = {"addressing": ("noise", "0"), "needle": ("text", "4096,16384"),
                "trace": ("both", "1024,4096,16384,32768,65536"), "gates": ("text", "0")}
    args.filler = args.filler or defaults[args.probe][0]
    args.lengths = [int(v) for v in (args.lengths or defaults[args.probe][1]).split(",")]
    torch.set_num_threads(1)
    model = TitansModel.load(args.model_dir)
    {"addressing": addressing, "needle": needle_vs_haystack, "trace": trace,
     "gates": gates}[args.probe](model, args)


if __name__ == "__main__":
    main()
