#!/usr/bin/python3
"""Probe (docs/evaluation.md, "Training the keys apart"): fine-tunes a subset of a model's
parameters on multi-fact recall tasks (2-8 facts, the titans-eval format), one 8-16 KiB passkey
stream of training text every --passkey_every steps, and the filler's text loss; optionally
adds a contrastive loss on one memory head's addressing: at each question, the query (at '=' for
the first digit, at the first digit for the second) against the keys at every stated fact's
digit, softmax over the facts at temperature --tau, the asked fact the target. Every
--eval_every steps: 20 four-fact tasks per filler (RULER noise, the licence texts) and gap (1 K,
4 K), scored like titans-eval (greedy, teacher-forced), and bits per byte on the first 16 KiB of
the held-out part of data/english.txt. An experiment, not a training stage.

    scripts/probe-recall-keys.py --out /tmp/probe --steps 100 --contrast 1
"""
import argparse, glob, math, os, random, re, sys, time
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python"))
import torch, torch.nn.functional as F
from titans_torch import passkey
from titans_torch.model import BOS, TitansModel
from titans_torch.train_gate import passkey_stream, stream_nats
from titans_torch.write_gate import read_training_texts

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--model_dir", default=os.path.join(ROOT, "models/default"))
parser.add_argument("--out", required=True, help="where the fine-tuned model goes")
parser.add_argument("--params", default=r"layers\.1\.memory\.",
                    help="regular expression over parameter names: which ones train")
parser.add_argument("--steps", type=int, default=100)
parser.add_argument("--batch", type=int, default=4, help="recall tasks per step")
parser.add_argument("--lr", type=float, default=1e-3)
parser.add_argument("--lm_weight", type=float, default=1.0, help="weight of the filler's text loss")
parser.add_argument("--passkey_every", type=int, default=4,
                    help="every Nth step is one passkey stream instead (0: never)")
parser.add_argument("--pk_len", type=int, default=16384, help="bytes of the longest passkey stream")
parser.add_argument("--gaps", default="256,1024,2048,4096", help="filler bytes to draw from")
parser.add_argument("--eval_every", type=int, default=25)
parser.add_argument("--seed", type=int, default=1)
parser.add_argument("--contrast", type=float, default=0.0, help="weight of the contrastive term")
parser.add_argument("--tau", type=float, default=0.1, help="its temperature")
parser.add_argument("--layer", type=int, default=1, help="the memory layer of the contrasted head")
parser.add_argument("--head", type=int, default=0, help="the contrasted head")
args = parser.parse_args()
torch.set_num_threads(2)
torch.manual_seed(0)
model = TitansModel.load(args.model_dir)
texts, held_out = read_training_texts(
    ",".join(os.path.join(ROOT, "data", f) for f in ("english.txt", "kjv.txt")))
licences = "".join(open(f, encoding="utf-8", errors="replace").read() for f in sorted(glob.glob(
    "/usr/share/common-licenses/*")) if not re.search(r"/(GFDL|GPL|LGPL)$", f))
for name, tensor in model.named_parameters():
    tensor.requires_grad_(bool(re.search(args.params, name.replace("params.", "").replace("__", "."))))
trained = [t for t in model.parameters() if t.requires_grad]
print("training", len(trained), "tensors", sum(t.numel() for t in trained), "numbers", flush=True)
optimizer = torch.optim.Adam(trained, lr=args.lr)
rng = random.Random(args.seed)


def recall_task(rng, pairs, gap, source):
    """One task as (bytes, answer offsets, filler range scored as text or (0, 0) in the noise,
    the order asked); source None is the noise."""
    text, answers, order, filler = passkey.recall_task(rng, pairs, gap, source)
    return list(text), answers, filler if source is not None else (0, 0), order


observed = []  # (q, k) of --layer per forward piece, while the observer is installed


def observe(layer, x, q, k, out):
    if layer == args.layer:
        observed.append((q, k))


def score(rows, answer_rows, text_ranges):
    """Rows of bytes (equal lengths) read from a fresh state: (nats [B, N], answer mask, text
    mask, logits). Row byte j is predicted at index j (<|bos|> comes first)."""
    observed.clear()
    nats, logits = stream_nats(model, torch.tensor([[BOS] + r for r in rows]))
    is_answer = torch.zeros_like(nats, dtype=torch.bool)
    is_text = torch.zeros_like(is_answer)
    for r, (answers, (begin, end)) in enumerate(zip(answer_rows, text_ranges)):
        is_answer[r, answers] = True
        is_text[r, begin:end] = True
    return nats, is_answer, is_text, logits


def evaluate():
    """Facts recalled exactly (greedy, teacher-forced) of 20 four-fact tasks per filler and gap,
    and bits per byte on the first 16 KiB of held-out data/english.txt."""
    eval_rng, results = random.Random(1234), {}
    with torch.no_grad():
        for filler_name, source in (("noise", None), ("lic", licences)):
            for gap in (1024, 4096):
                right = asked = 0
                for _ in range(5):
                    rows, answers, _, _ = zip(*[recall_task(eval_rng, 4, gap, source)
                                               for _ in range(4)])
                    _, _, _, logits = score(list(rows), list(answers), [(0, 0)] * 4)
                    predicted = logits.argmax(-1)
                    for r in range(4):
                        for f in range(0, 8, 2):
                            first, second = answers[r][f], answers[r][f + 1]
                            right += int(predicted[r, first] == rows[r][first] and
                                         predicted[r, second] == rows[r][second])
                            asked += 1
                results[f"{filler_name}{gap}"] = f"{right}/{asked}"
        held = held_out[0][:16384].encode("utf-8", "replace")[:16384]
        nats, _, _, _ = score([list(held)], [[]], [(0, 0)])
        results["heldout_bpb"] = round(nats.mean().item() / math.log(2), 4)
    return results


def contrastive_loss(rows_answers, orders, pairs):
    """Mean over rows and the two digits of CE(softmax_facts(q . k / tau), asked fact) for the
    contrasted head: the query at the question's '=' (first digit) or first digit (second)
    against the keys at each stated fact's first or second digit (byte 8 i + 4 + d: input
    position one more, after <|bos|>)."""
    H, dh = model.config["num_heads"], model.config["head_dim"]
    q = torch.cat([p[0] for p in observed], 1)
    k = torch.cat([p[1] for p in observed], 1)
    B, T = q.shape[:2]
    q = q.view(B, T, H, dh)[:, :, args.head]
    k = k.view(B, T, H, dh)[:, :, args.head]
    losses = []
    for r in range(B):
        for d in (0, 1):
            keys = k[r, [8 * i + 5 + d for i in range(pairs)]]  # [pairs, dh]
            queries = q[r, [rows_answers[r][2 * j] + d for j in range(pairs)]]  # [pairs, dh]
            losses.append(F.cross_entropy(queries @ keys.t() / args.tau, torch.tensor(orders[r])))
    return torch.stack(losses).mean()


print("step 0", evaluate(), flush=True)
for step in range(args.steps):
    began = time.time()
    optimizer.zero_grad()
    if args.passkey_every and step % args.passkey_every == args.passkey_every - 1:
        length = rng.choice([args.pk_len // 2, args.pk_len])
        tokens, is_text, is_answer = passkey_stream(rng, texts, length)
        nats = stream_nats(model, torch.tensor([tokens]))[0][0]
        answer, text = nats[is_answer].mean(), nats[is_text].mean()
        kind = "pk"
    else:
        pairs = rng.randrange(2, 9)
        gap = rng.choice([int(g) for g in args.gaps.split(",")])
        tasks = [recall_task(rng, pairs, gap, None if rng.random() < 0.3 else
                             texts[0 if rng.random() < 0.75 else 1]) for _ in range(args.batch)]
        rows, answers, text_ranges, orders = zip(*tasks)
        model.memory_observer = observe if args.contrast else None
        nats, is_answer, is_text, _ = score(list(rows), list(answers), list(text_ranges))
        model.memory_observer = None
        answer = nats[is_answer].mean()
        text = nats[is_text].mean() if is_text.any() else torch.zeros(())
        kind = f"mf{pairs}x{gap}"
        if args.contrast:  # the printed answer loss then includes the weighted term
            contrast = contrastive_loss(answers, orders, pairs)
            answer = answer + args.contrast * contrast
            kind += f" c{contrast.item():.3f}"
    (answer + args.lm_weight * text).backward()
    finite = all(torch.isfinite(t.grad).all() for t in trained if t.grad is not None)
    if finite:
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
    print(f"step {step + 1} {kind} ans {answer.item():.3f} txt {text.item() / math.log(2):.3f} "
          f"{'' if finite else 'SKIP'} {time.time() - began:.1f}s", flush=True)
    if (step + 1) % args.eval_every == 0:
        print("eval", step + 1, evaluate(), flush=True)
        model.save(args.out, description="experiment")
model.save(args.out, description="experiment")
