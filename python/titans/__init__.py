"""Client for titans-server: sessions whose neural long-term memory lives on the server.

    import titans
    with titans.Client("localhost:50051") as client:
        with client.create_session() as session:
            session.append(open("notes.txt", "rb"), progress=print)
            for delta in session.generate("Question: ...", max_tokens=64):
                print(delta.text, end="", flush=True)

titans.aio has the same API for asyncio. Every error is a titans.TitansError carrying the gRPC
status code; idempotent calls are retried on UNAVAILABLE and RESOURCE_EXHAUSTED (RetryPolicy
lists which calls).
"""
from titans._common import (AppendResult, FinishReason, GenerationResult, ModelInfo, Progress,
                            RetryPolicy, ScoreResult, SessionInfo, Snapshot, TextDelta, Timings,
                            TitansError)
from titans._version import __version__
from titans.client import Client, Generation, Session, SessionStream

__all__ = [
    "AppendResult", "Client", "FinishReason", "Generation", "GenerationResult", "ModelInfo",
    "Progress", "RetryPolicy", "ScoreResult", "Session", "SessionInfo", "SessionStream", "Snapshot",
    "TextDelta",
    "Timings", "TitansError", "__version__",
]
