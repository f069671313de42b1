#!/usr/bin/env python3
"""Streams a text file into a new session, with a progress bar, then asks a question and prints
the answer as it is generated. The file can be far longer than the model's attention window:
what the session keeps of it is in its neural memory, on the server.

    python3 ask_file.py notes.txt "The passkey is" --address localhost:50051

The progress bar uses tqdm when it is installed (`pip install ./python[progress]`), plain text
otherwise. The session is closed at the end unless --keep is given (its id is printed).
"""
import argparse
import os
import sys

import titans


class Progress:
    def __init__(self, total):
        try:
            from tqdm import tqdm
            self._bar = tqdm(total=total, unit="B", unit_scale=True, desc="append",
                             file=sys.stderr)
        except ImportError:
            self._bar = None
        self._total, self._shown = total, 0

    def __call__(self, sent, total):
        if self._bar is not None:
            self._bar.update(sent - self._bar.n)
        else:
            share = f"{100 * sent / total:5.1f}%" if total else ""
            print(f"\rappend: {sent:,} bytes sent {share}", end="", file=sys.stderr,
                  flush=True)

    def close(self):
        if self._bar is not None:
            self._bar.close()
        else:
            print(file=sys.stderr)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", help="text file to stream into the session")
    parser.add_argument("question", help="prompt appended after the file, then generated from")
    parser.add_argument("--address", default="localhost:50051")
    parser.add_argument("--token", default=None, help="bearer token (default: $TITANS_TOKEN)")
    parser.add_argument("--max_tokens", type=int, default=32)
    parser.add_argument("--keep", action="store_true", help="leave the session open")
    args = parser.parse_args()

    with titans.Client(args.address, token=args.token) as client:
        session = client.create_session(labels={"example": "ask_file"})
        try:
            progress = Progress(os.path.getsize(args.file))
            with open(args.file, "rb") as f:
                appended = session.append(f, progress=progress)
            progress.close()
            print(f"session {session.id}: {appended.tokens_consumed:,} tokens appended",
                  file=sys.stderr)
            generation = session.generate(args.question, max_tokens=args.max_tokens,
                                          temperature=0)
            print(args.question, end="", flush=True)
            for delta in generation:
                print(delta.text, end="", flush=True)
            print()
            t = generation.timings
            print(f"[{generation.finish_reason.value}; first token after "
                  f"{t.time_to_first_token_seconds:.3f} s]", file=sys.stderr)
        finally:
            if not args.keep:
                session.close()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except titans.TitansError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
