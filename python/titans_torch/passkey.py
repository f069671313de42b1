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
