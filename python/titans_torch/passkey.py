"""The passkey task's texts exactly as the C++ trainer writes them (model/trainer.cc's
PasskeyNeedle and kNoiseSentence, model/trainer.h's kPasskeyQuestion): what the default model was
trained to answer, for the tools that probe it from Python."""

# RULER's noise haystack sentence (S-NIAH-PK), repeated to the length wanted.
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
QUESTION = " What is the pass key? The pass key is "


def needle(key: str) -> str:
    return f" The pass key is {key}. Remember it. {key} is the pass key. "
