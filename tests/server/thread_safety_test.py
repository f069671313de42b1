#!/usr/bin/env python3
"""Clang's thread-safety analysis over every source that declares lock annotations.

The build is GCC's (which ignores ABSL_GUARDED_BY and friends); this test re-parses the server's
sources and the model runner with clang++ -fsyntax-only -Wthread-safety -Werror=thread-safety,
using the build's own compile commands, so an access to a guarded field without its lock, or a
call into a function that takes a lock the caller already holds, fails the suite.

It first checks that the analysis is live: a small file that reads a guarded field without its
lock must be rejected (otherwise a clang that silently ignored the flag would pass everything).

    thread_safety_test.py SOURCE_DIR BUILD_DIR
"""
import json
import os
import shlex
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

FLAGS = ["-fsyntax-only", "-Wthread-safety", "-Werror=thread-safety"]


def clang_args(entry):
    """The entry's compile command for clang++, without its output and -c."""
    args = shlex.split(entry["command"]) if "command" in entry else list(entry["arguments"])
    out, skip = ["clang++"], False
    for a in args[1:]:
        if skip:
            skip = False
        elif a == "-o":
            skip = True
        elif a != "-c":
            out.append(a)
    return out


def annotated(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return "ABSL_" in text or "MutexLock" in text or "engine_impl.h" in text


def main():
    source, build = sys.argv[1], sys.argv[2]
    with open(os.path.join(build, "compile_commands.json"), encoding="utf-8") as f:
        entries = json.load(f)
    chosen = []
    for e in entries:
        rel = os.path.relpath(e["file"], source)
        if rel.startswith("server/") or rel == "model/model_runner.cc":
            if annotated(e["file"]) or rel.startswith("server/engine/"):
                chosen.append(e)
    if not chosen:
        sys.exit("no server sources in compile_commands.json")

    # The analysis must be live: an unguarded read of a guarded field is an error.
    template = next(e for e in chosen if e["file"].endswith("server/engine/engine.cc"))
    with tempfile.NamedTemporaryFile("w", suffix=".cc", delete=False) as bad:
        bad.write('#include "model/mutex.h"\n'
                  "struct Counter {\n  titans::Mutex mu;\n  int n ABSL_GUARDED_BY(mu) = 0;\n"
                  "  int Read() { return n; }\n};\n")
    try:
        args = clang_args(template)
        args[-1] = bad.name  # the source file is the last argument
        r = subprocess.run(args + FLAGS, cwd=template["directory"], capture_output=True,
                           text=True)
        if r.returncode == 0 or "requires holding mutex" not in r.stderr:
            sys.exit("clang accepted an unguarded read: the analysis is not running\n" +
                     r.stderr)
    finally:
        os.unlink(bad.name)

    def check(entry):
        r = subprocess.run(clang_args(entry) + FLAGS, cwd=entry["directory"],
                           capture_output=True, text=True)
        return entry["file"], r.returncode, r.stderr

    failed = 0
    with ThreadPoolExecutor(max_workers=int(os.environ.get("TITANS_TEST_JOBS", "2"))) as pool:
        for path, rc, err in pool.map(check, chosen):
            print(("ok   " if rc == 0 else "FAIL ") + os.path.relpath(path, source))
            if rc != 0:
                failed += 1
                print(err)
    print(f"{len(chosen) - failed}/{len(chosen)} sources pass -Wthread-safety")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
