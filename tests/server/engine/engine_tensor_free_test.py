#!/usr/bin/python3
"""Build check (issue 20): the server's engine includes no LibTorch header and holds no tensors.

Follows every project header that server/engine/ includes, transitively, and fails if any of
them includes a LibTorch (ATen, c10, torch) or CUDA header, or if engine code names a tensor
type. The engine reaches the model only through model/model_runner.h and other tensor-free
headers. A self-check first confirms that the scan does see LibTorch behind a header known to
pull it in (model/titans_model.h), so a broken scan cannot pass.

Usage: engine_tensor_free_test.py REPO_ROOT
"""
import pathlib
import re
import sys

INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]', re.MULTILINE)
TENSOR_HEADER = re.compile(r'^(ATen|c10|torch|caffe2|cuda|cuda_runtime|cublas)[/._]')
TENSOR_NAME = re.compile(r'\b(at::Tensor|torch::|c10::|at::kCPU|at::Device)\b')


def tensor_includes(root, start):
    """(header chain, offending include) pairs reachable from `start` (a repo-relative path)."""
    found, seen, todo = [], set(), [(start, (start,))]
    while todo:
        path, chain = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        text = (root / path).read_text(encoding='utf-8', errors='replace')
        for kind, name in INCLUDE.findall(text):
            if TENSOR_HEADER.match(name):
                found.append((' -> '.join(chain), name))
            elif kind == '"' and (root / name).is_file():
                todo.append((name, chain + (name,)))
    return found


def main():
    root = pathlib.Path(sys.argv[1]).resolve()
    if not tensor_includes(root, 'model/titans_model.h'):
        print('self-check failed: the scan finds no LibTorch header behind model/titans_model.h')
        return 1
    failures = []
    engine = sorted(p for p in (root / 'server/engine').iterdir() if p.suffix in ('.h', '.cc'))
    for path in engine:
        rel = str(path.relative_to(root))
        for chain, header in tensor_includes(root, rel):
            failures.append(f'{chain} includes <{header}>')
        for number, line in enumerate(path.read_text(encoding='utf-8').splitlines(), 1):
            if TENSOR_NAME.search(line.split('//')[0]):
                failures.append(f'{rel}:{number}: names a tensor type: {line.strip()}')
    for f in failures:
        print(f)
    print(f'{len(engine)} engine files checked, {len(failures)} problems')
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
