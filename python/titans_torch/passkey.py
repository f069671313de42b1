"""The recall tasks' texts exactly as the C++ trainer writes them (model/trainer.cc's
PasskeyNeedle, kNoiseSentence and MakeRecallTask, model/trainer.h's kPasskeyQuestion): what the
default model was trained to answer, for the tools that probe and calibrate it from Python."""

# RULER's noise haystack sentence (S-NIAH-PK), repeated to the length wanted.
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
QUESTION = " What is the pass key? The pass key is "


def needle(key: str) -> str:
    return f" The pass key is {key}. Remember it. {key} is the pass key. "


def fact(name: str, value: str) -> str:
    """One fact of a multi-fact recall task: a three-letter name and a two-digit value."""
    return f"{name}={value}, "


def value_offset(i: int) -> int:
    """The byte offset of fact i's first value digit in a recall task (the facts come first,
    each `fact(name, value)`: "abc=42, "); the second digit is the next byte."""
    return i * len(fact("abc", "42")) + len("abc=")


def filler_source(rng, texts):
    """The filler of a training recall task: None (RULER's noise) 30% of the time, else the
    first text 75% of the time and the second (if any) otherwise."""
    return None if rng.random() < 0.3 else texts[0 if rng.random() < 0.75 else 1 % len(texts)]


def random_key(rng) -> str:
    """A five-digit passkey without a leading zero, as the trainer draws them."""
    return str(rng.randrange(1, 10)) + "".join(str(rng.randrange(10)) for _ in range(4))


def noise(offset: int, n: int) -> str:
    """n characters of RULER's noise sentences repeated, starting `offset` into the cycle."""
    return (NOISE * ((offset + n) // len(NOISE) + 1))[offset:offset + n]


def haystack(rng, n: int, source=None) -> bytes:
    """n bytes of filler: RULER's noise from a random phase (source None), or a random window of
    the text `source` (padded with spaces where its encoding falls short)."""
    if source is None:
        return noise(rng.randrange(len(NOISE)), n).encode()
    start = rng.randrange(0, len(source) - n - 1)
    return source[start:start + n].encode("utf-8", "replace")[:n].ljust(n, b" ")


def recall_task(rng, pairs: int, filler_bytes: int, source=None, question_gap: int = 0):
    """A multi-fact recall task in titans-eval's format (model/trainer.cc's MakeRecallTask, not
    its random draws): `pairs` facts, `filler_bytes` of haystack(source), then every name asked
    in a random order. Returns (bytes, the byte offsets of the answers' digits in question
    order, the order (question j asks fact order[j]), (filler begin, filler end)).
    question_gap > 0 puts that many bytes of haystack(source) between consecutive questions (a
    diagnostic: the eval's questions follow each other directly)."""
    names = []
    while len(names) < pairs:
        name = "".join(chr(ord("a") + rng.randrange(26)) for _ in range(3))
        if name not in names:
            names.append(name)
    values = ["%d%d" % (rng.randrange(10), rng.randrange(10)) for _ in names]
    text = "".join(fact(n, v) for n, v in zip(names, values)).encode()
    begin = len(text)
    text += haystack(rng, filler_bytes, source)
    end = len(text)
    text += b" Recall: "
    order = list(range(pairs))
    rng.shuffle(order)
    answers = []
    for j, i in enumerate(order):
        if j and question_gap > 0:
            text += haystack(rng, question_gap, source)
        text += f"{names[i]}=".encode()
        answers += [len(text), len(text) + 1]
        text += f"{values[i]}, ".encode()
    return text, answers, order, (begin, end)
