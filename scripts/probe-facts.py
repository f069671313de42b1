#!/usr/bin/python3
"""Probe (docs/evaluation.md, "Refit, then the read path"): multi-fact recall by the number of
facts and the filler between them and the questions, in the noise haystack, read as titans-eval
reads it (greedy, teacher-forced, from a fresh state). Per cell (20 tasks, the same draws for
every model): whole values right, first digits right, and how many wrong first digits are
another stated fact's. A model that stores every value but cannot tell the names apart answers
n facts right 1/n of the time, every wrong answer another fact's. Of those, it counts the
previous question's answer; --question_gap puts noise between the questions (64 bytes or more
put the previous answer outside the attention window).

    scripts/probe-facts.py models/default
"""
import argparse
import os
import random
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python"))
import torch  # noqa: E402
from titans_torch import passkey  # noqa: E402
from titans_torch.model import BOS, TitansModel  # noqa: E402
from titans_torch.train_gate import stream_nats  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("model_dir")
parser.add_argument("--facts", default="1,2,4,8", help="fact counts (comma-separated)")
parser.add_argument("--gaps", default="64,1024,4096", help="filler bytes (comma-separated)")
parser.add_argument("--question_gap", type=int, default=0,
                    help="noise bytes between consecutive questions")
parser.add_argument("--threads", type=int, default=1)
args = parser.parse_args()
torch.set_num_threads(args.threads)
model = TitansModel.load(args.model_dir)
for pairs in map(int, args.facts.split(",")):
    for gap in map(int, args.gaps.split(",")):
        rng = random.Random(77)
        whole = first = other = previous = asked = 0
        with torch.no_grad():
            for _ in range(5):  # 5 batches of 4 tasks
                tasks = [passkey.recall_task(rng, pairs, gap, None, args.question_gap)
                         for _ in range(4)]
                rows = [list(task[0]) for task in tasks]
                _, logits = stream_nats(model, torch.tensor([[BOS] + row for row in rows]))
                predicted = logits.argmax(-1)  # index j predicts row byte j
                for r, (text, answers, _, _) in enumerate(tasks):
                    stated_firsts = {text[passkey.value_offset(i)] for i in range(pairs)}
                    for j in range(pairs):
                        at_first, at_second = answers[2 * j], answers[2 * j + 1]
                        guess = int(predicted[r, at_first])
                        first_right = guess == rows[r][at_first]
                        whole += first_right and int(predicted[r, at_second]) == rows[r][at_second]
                        first += first_right
                        other += (not first_right) and guess in stated_firsts
                        previous += (not first_right and j > 0 and
                                     guess == rows[r][answers[2 * j - 2]])
                        asked += 1
        print(f"facts {pairs} filler {gap}: whole {whole}/{asked}, first digit {first}/{asked}, "
              f"wrong first digits that are another fact's {other}/{asked - first}, the previous "
              f"question's answer {previous}", flush=True)
