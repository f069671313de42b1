"""titans_torch against titans-server: the same per-token log-probabilities (Score) within 1e-4
nats for the shipped models and random models of every variant, with the state carried across
many calls; the streaming form split anywhere; training through the chunked form; and a model
fine-tuned by `python3 -m titans_torch.train` served by the server.

Environment (set by CTest): TITANS_SERVER, TITANS_INIT_MODEL (titans-init-model), TITANS_SOURCE_DIR.
"""
import json
import os
import random
import re
import subprocess
import sys
import zlib

import pytest
import torch

import titans
from conftest import running_server
from titans_torch import TitansModel
from titans_torch.write_gate import fit_stream, recall_head, split_training_text

SOURCE = os.environ.get("TITANS_SOURCE_DIR",
                        os.path.join(os.path.dirname(__file__), "..", ".."))
TOLERANCE = 1e-4  # nats, per token (issue 18)
# English the models never trained on (every Debian system has it).
TEXT = open("/usr/share/common-licenses/GPL-3", "rb").read()[3000:]

SMALL = {"format_version": 1, "name": "parity", "d_model": 32, "num_layers": 2, "num_heads": 2,
         "head_dim": 8, "ffn_hidden": 48}
# Random models: every variant, and the cases an independent implementation gets wrong first.
RANDOM_MODELS = {
    "mac_segment_4_chunks_gelu_residual_depth3": {
        "variant": "mac", "memory": {"chunk_size": 4, "activation": "gelu", "residual": True,
                                     "depth": 3}, "attention": {"segment_size": 16}},
    "mac_segment_equals_chunk": {
        "variant": "mac", "memory": {"chunk_size": 8}, "attention": {"segment_size": 8,
                                                                     "num_persistent": 2}},
    "mag_chunk_5_window_12_depth3_bound_acting": {
        "variant": "mag", "memory": {"chunk_size": 5, "depth": 3, "activation": "gelu",
                                     "max_weight_rms": 0.15}, "attention": {"window": 12}},
    "mal_residual_signed_keys": {
        "variant": "mal", "memory": {"residual": True, "qk_activation": "none"},
        "attention": {"window": 20}},
    "lmm_depth1_chunk3": {"variant": "lmm", "memory": {"depth": 1, "chunk_size": 3}},
    # memory.num_heads: more memory heads than attention heads, and fewer.
    "mal_three_memory_heads": {"variant": "mal", "memory": {"num_heads": 3},
                               "attention": {"window": 10}},
    "mag_one_memory_head": {"variant": "mag", "memory": {"num_heads": 1}},
    # memory.num_heads per layer: layers of different widths.
    "mal_per_layer_memory_heads": {"variant": "mal", "memory": {"num_heads": [3, 1]},
                                   "attention": {"window": 10}},
    "swa_window_7_no_persistent": {"variant": "swa", "attention": {"window": 7,
                                                                   "num_persistent": 0}},
}


def random_model(tmp_path, name, overrides):
    config = json.loads(json.dumps(SMALL))
    for key, value in overrides.items():
        if isinstance(value, dict):
            config.setdefault(key, {}).update(value)
        else:
            config[key] = value
    (tmp_path / f"{name}.json").write_text(json.dumps(config))
    out = tmp_path / name
    subprocess.run([os.environ["TITANS_INIT_MODEL"], f"--config={tmp_path / name}.json",
                    f"--out={out}", "--seed=7"], check=True, capture_output=True)
    return str(out)


def pieces(data, seed, sizes=(1, 2, 5, 17, 64, 200, 333)):
    """`data` cut into calls of random sizes (seeded)."""
    rng, out, begin = random.Random(seed), [], 0
    while begin < len(data):
        size = rng.choice(sizes)
        out.append(data[begin:begin + size])
        begin += size
    return out


def compare_with_server(model_dir, nbytes, seed, model=None):
    """Streams `nbytes` of TEXT into a server session and into titans_torch, in the same random
    pieces, each a committed Score; returns the largest log-prob difference and the count."""
    model = model or TitansModel.load(model_dir)
    worst, count, state = 0.0, 0, None
    with running_server(model_dir) as address, titans.Client(address) as client:
        with client.create_session() as session, torch.no_grad():
            for piece in pieces(TEXT[:nbytes], seed):
                served = session.score(list(piece), commit=True).logprobs
                ours, state = model.score(list(piece), state)
                assert len(served) == len(ours) == len(piece)
                worst = max(worst, max(abs(a - b) for a, b in zip(served, ours)))
                count += len(piece)
            assert session.refresh().position == state.position
    return worst, count


@pytest.mark.parametrize("name", ["default", "swa-baseline"])
def test_shipped_models_match_the_server(name):
    worst, count = compare_with_server(os.path.join(SOURCE, "models", name), 3000, seed=1)
    print(f"{name}: largest difference {worst:.2e} nats over {count} tokens")  # pytest -s
    assert count == 3000
    assert worst < TOLERANCE, f"{name}: {worst:.2e} nats"


@pytest.mark.parametrize("name", sorted(RANDOM_MODELS))
def test_random_models_of_every_variant_match_the_server(tmp_path, name):
    model_dir = random_model(tmp_path, name, RANDOM_MODELS[name])
    worst, count = compare_with_server(model_dir, 1200, seed=zlib.crc32(name.encode()))
    print(f"{name}: largest difference {worst:.2e} nats over {count} tokens")  # pytest -s
    assert worst < TOLERANCE, f"{name}: {worst:.2e} nats"


def test_the_comparison_can_fail(tmp_path):
    """A model one detail away (the conv taps in the other order) is caught."""
    model_dir = random_model(tmp_path, "mal", RANDOM_MODELS["mal_residual_signed_keys"])
    wrong = TitansModel.load(model_dir)
    with torch.no_grad():
        taps = wrong.p("layers.0.memory.k_conv.weight")
        taps.copy_(taps.flip(1))
    worst, _ = compare_with_server(model_dir, 600, seed=3, model=wrong)
    assert worst > 100 * TOLERANCE


@pytest.mark.parametrize("name", sorted(RANDOM_MODELS))
def test_a_stream_split_anywhere_gives_the_same_logits_and_state(tmp_path, name):
    model = TitansModel.load(random_model(tmp_path, name, RANDOM_MODELS[name]),
                             dtype=torch.float64)
    ids = torch.tensor([list(TEXT[:300])])
    with torch.no_grad():
        whole, whole_state = model(ids)
        parts, state, begin = [], None, 0
        for piece in pieces(TEXT[:300], seed=11):
            logits, state = model(ids[:, begin:begin + len(piece)], state)
            parts.append(logits)
            begin += len(piece)
    assert torch.allclose(torch.cat(parts, 1), whole, atol=1e-9, rtol=0)
    assert state.position == whole_state.position == 300
    for a, b in zip(state.layers, whole_state.layers):
        for w, v in zip(a.weights + a.momentum, b.weights + b.momentum):
            assert torch.allclose(w, v, atol=1e-9, rtol=0)


def test_training_reaches_the_memory_through_the_chunked_form(tmp_path):
    model = TitansModel.load(random_model(tmp_path, "lmm", {"variant": "lmm"}))
    ids = torch.tensor([list(TEXT[:96]), list(TEXT[96:192])])
    logits, state = model(ids[:, :-1])
    torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                      ids[:, 1:].reshape(-1)).backward()
    for name in ("layers.0.memory.initial_weights.0", "layers.0.memory.theta_proj.weight",
                 "layers.1.memory.eta_proj.bias", "layers.1.memory.alpha_proj.weight"):
        grad = model.p(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert state.position == 95 and state.layers[0].weights[0].shape[0] == 2
    # The state carries the graph until detached (truncated backpropagation between calls).
    assert state.layers[0].weights[0].requires_grad
    detached = state.detach()
    assert not detached.layers[0].weights[0].requires_grad
    assert not detached.last_logits.requires_grad and detached.position == 95
    assert torch.equal(detached.layers[1].momentum[0], state.layers[1].momentum[0])


def test_save_and_load_round_trip_and_the_server_checks_the_checksum(tmp_path):
    model = TitansModel.load(random_model(tmp_path, "mag", {"variant": "mag"}))
    with torch.no_grad():
        model.p("final_norm.weight").mul_(1.5)
    model.save(str(tmp_path / "saved"), description="round trip", initialization="trained")
    again = TitansModel.load(str(tmp_path / "saved"))
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    assert again.config["description"] == "round trip"
    worst, _ = compare_with_server(str(tmp_path / "saved"), 300, seed=5)
    assert worst < TOLERANCE
    # A flipped byte in the weights is refused by the server (the recorded CRC-32C).
    blob = bytearray((tmp_path / "saved" / "model.safetensors").read_bytes())
    blob[-3] ^= 0x40
    (tmp_path / "saved" / "model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(RuntimeError, match="checksum"):
        with running_server(str(tmp_path / "saved")):
            pass


def test_fine_tune_resume_and_serve(tmp_path):
    start = random_model(tmp_path, "start", {"variant": "mal", "memory": {"chunk_size": 8},
                                             "attention": {"window": 16}})
    data = tmp_path / "text.txt"
    data.write_bytes(TEXT[:40000])
    out = tmp_path / "tuned"
    env = {**os.environ, "PYTHONPATH": os.path.join(SOURCE, "python")}

    def train(*extra):
        return subprocess.run(
            [sys.executable, "-m", "titans_torch.train", "--model_dir", start, "--data",
             str(data), "--out", str(out), "--batch", "4", "--seq_len", "64", "--lr", "3e-3",
             "--warmup", "5", "--checkpoint_every", "10", "--heldout_bytes", "2048",
             "--log_every", "5", "--device", "cpu", *extra],
            env=env, capture_output=True, text=True, timeout=600, check=True).stdout

    first = train("--steps", "20")
    assert "step     20" in first and (out / "checkpoint" / "trainer.pt").exists()
    before = float(first.split("held-out bits/byte before: ")[1].split()[0])
    resumed = train("--steps", "40", "--resume")
    assert "resumed at step 20" in resumed and "step     25" in resumed
    after = float(resumed.split("held-out bits/byte after: ")[1].split()[0])
    assert after < before - 0.5, (before, after)
    config = json.loads((out / "config.json").read_text())
    assert config["initialization"] == "trained"
    assert config["description"].startswith("Fine-tuned by: python3 -m titans_torch.train")
    # The server loads and serves what was trained, and scores it as titans_torch does.
    worst, _ = compare_with_server(str(out), 500, seed=9)
    assert worst < TOLERANCE
    with running_server(str(out)) as address, titans.Client(address) as client:
        with client.create_session() as session:
            session.append(TEXT[:200])
            result = session.generate(max_tokens=8, temperature=0, stop_at_eos=False).result()
            assert len(result.token_ids) == 8


def run_gate_tool(module, *args):
    """python3 -m titans_torch.MODULE ARGS..., its output captured."""
    env = {**os.environ, "PYTHONPATH": os.path.join(SOURCE, "python")}
    return subprocess.run([sys.executable, "-m", f"titans_torch.{module}", *map(str, args)],
                          env=env, capture_output=True, text=True, timeout=600)


def assert_only_row_changed(before, after, names, row):
    """Every parameter equal except `names`, which differ in `row` and only there."""
    for name, _, _, _ in before.slots:
        if name in names:
            assert not torch.equal(after.p(name)[row], before.p(name)[row]), name
            for other in range(before.p(name).shape[0]):
                if other != row:
                    assert torch.equal(after.p(name)[other], before.p(name)[other]), name
        else:
            assert torch.equal(after.p(name), before.p(name)), name


def assert_resumes_bit_for_bit(train, part, after, names):
    """train(OUT, STEPS, *more) for 2 steps, then resumed from their checkpoint for a third: the
    parameters `names` equal those of `after` (3 steps in one run), bit for bit."""
    assert train(part, 2).returncode == 0
    resumed = train(part, 3, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed at step 2" in resumed.stdout and resumed.stdout.count("step ") == 2
    again = TitansModel.load(str(part))
    for name in names:
        assert torch.equal(again.p(name), after.p(name)), name


GATE_ROW = ("layers.1.memory.theta_proj.weight", "layers.1.memory.theta_proj.bias")


def test_write_gate_shifts_one_head_and_the_server_serves_it(tmp_path):
    start = random_model(tmp_path, "gate", {"variant": "mal"})
    out = tmp_path / "calibrated"
    run = run_gate_tool("write_gate", "--model_dir", start, "--out", out, "--layer", "1",
                        "--head", "1", "--theta_bias_shift", "-2.5")
    assert run.returncode == 0, run.stderr
    assert "theta_proj.bias[1] -2.5" in run.stdout
    before, after = TitansModel.load(start), TitansModel.load(str(out))
    changed = "layers.1.memory.theta_proj.bias"
    assert_only_row_changed(before, after, {changed}, 1)
    assert after.p(changed)[1].item() == pytest.approx(before.p(changed)[1].item() - 2.5)
    config = json.loads((out / "config.json").read_text())
    assert config["description"].startswith("python3 -m titans_torch.write_gate")
    # Writing less changes what the model predicts, and the server agrees with titans_torch.
    worst, _ = compare_with_server(str(out), 300, seed=6)
    assert worst < TOLERANCE
    assert before.score(list(TEXT[:300]))[0] != after.score(list(TEXT[:300]))[0]
    # A head or layer that does not exist is refused, and nothing is written.
    bad = run_gate_tool("write_gate", "--model_dir", start, "--out", tmp_path / "bad", "--layer",
                        "0", "--head", "2", "--theta_bias_shift", "-1")
    assert bad.returncode == 2 and "head 2 out of range" in bad.stderr
    assert not (tmp_path / "bad").exists()
    # --head auto picks the head whose gate opens most on a passkey's digits, and shifts that one.
    auto = run_gate_tool("write_gate", "--model_dir", start, "--out", tmp_path / "auto",
                         "--layer", "1", "--head", "auto", "--theta_bias_shift", "-1")
    assert auto.returncode == 0, auto.stderr
    picked = int(auto.stdout.split("recall head of layer 1: ")[1].split()[0])
    head, ratios = recall_head(before, 1)
    assert picked == head and ratios[head] == max(ratios) and len(ratios) == 2
    shifted = TitansModel.load(str(tmp_path / "auto")).p(changed)
    assert shifted[picked].item() == pytest.approx(before.p(changed)[picked].item() - 1)


def test_fit_streams_plant_a_passkey_and_four_facts_and_classify_every_byte():
    text = TEXT.decode("utf-8", "replace")
    rng = random.Random(3)
    for _ in range(5):
        tokens, classes = fit_stream(rng, text)
        assert len(tokens) == len(classes)
        stream = bytes(tokens).decode()
        needle = stream.index(" The pass key is ")
        key = stream[needle + 17:needle + 22]
        assert key.isdigit() and f"{key} is the pass key." in stream
        facts = [stream[i - 3:i + 3] for i in range(3, len(stream) - 3)
                 if stream[i] == "=" and stream[i + 1:i + 3].isdigit() and stream[i + 3] == ","
                 and stream[i - 3:i].isalpha() and stream[i - 3:i].islower()]
        assert len(facts) >= 4
        told = [i for i, c in enumerate(classes) if c == 0]
        assert len(told) == 10 + 4 * 2  # the key twice, four two-digit values
        assert all(chr(tokens[i]).isdigit() for i in told)
        # Every other digit is the text's own; every text byte that is not a digit is "text".
        for i, c in enumerate(classes):
            if c == 1:
                assert chr(tokens[i]).isdigit()
            if c == 2:
                assert not chr(tokens[i]).isdigit()
    train, held_out = split_training_text(b"x" * 95 + b"y" * 5)
    assert (train, held_out) == ("x" * 95, "y" * 5)


def test_write_gate_fit_writes_the_texts_digits_less_and_only_changes_that_heads_row(tmp_path):
    start = random_model(tmp_path, "fit", {"variant": "mal"})
    # Training text with digits of its own: the licence text, numbered.
    lines = TEXT.decode("utf-8", "replace").splitlines()[:400]
    corpus = tmp_path / "numbered.txt"
    corpus.write_text("".join(f"{i * 37 % 1000} {line}\n" for i, line in enumerate(lines)))
    out = tmp_path / "fitted"
    run = run_gate_tool("write_gate", "--model_dir", start, "--out", out, "--layer", "1",
                        "--head", "1", "--fit_on", corpus, "--fit_streams", "4")
    assert run.returncode == 0, run.stderr
    assert "theta_proj row 1 fitted" in run.stdout
    assert_only_row_changed(TitansModel.load(start), TitansModel.load(str(out)), GATE_ROW, 1)

    def theta(line, kind):  # "<kind> BEFORE -> AFTER" on the report's line
        part = line.split(kind + " ")[1].split(",")[0]
        return [float(v) for v in part.split(" -> ")]

    for line in run.stdout.splitlines():
        if "streams:" in line:
            digits, text, told = (theta(line, k) for k in ("text digits", "other text",
                                                           "told digits"))
            assert digits[1] < digits[0], line
            assert told[1] >= 0.95 * told[0], line
            assert text[1] == pytest.approx(text[0], rel=0.5), line
    worst, _ = compare_with_server(str(out), 300, seed=7)
    assert worst < TOLERANCE
    # A text without digits gives the fit nothing to write less: refused, nothing written.
    plain = tmp_path / "plain.txt"
    plain.write_text("no digits here at all. " * 300)
    mac = random_model(tmp_path, "fit_mac", {"variant": "mac", "attention": {"segment_size": 16}})
    for model, args, message in (
            (start, ["--fit_on", plain, "--fit_streams", "2"], "no digits of text"),
            (mac, ["--fit_on", corpus, "--fit_streams", "1"], "MAC"),
            (start, [], "nothing to do")):
        bad = run_gate_tool("write_gate", "--model_dir", model, "--out", tmp_path / "bad",
                            "--layer", "1", "--head", "0", *args)
        assert bad.returncode == 2 and message in bad.stderr, (args, bad.stderr)
        assert not (tmp_path / "bad").exists()


def test_train_gate_trains_one_row_and_resumes_bit_for_bit(tmp_path):
    start = random_model(tmp_path, "train_gate", {"variant": "mal", "attention": {"window": 16}})
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(TEXT[:20000])

    def train(out, steps, *more):
        return run_gate_tool("train_gate", "--model_dir", start, "--out", out, "--layer", "1",
                             "--head", "0", "--data", corpus, "--steps", steps, "--length", "600",
                             "--lr", "0.05", "--threads", "1", *more)

    whole = train(tmp_path / "whole", 3)
    assert whole.returncode == 0, whole.stderr
    assert whole.stdout.count("step ") == 3 and "answer" in whole.stdout
    assert (tmp_path / "whole.checkpoint.pt").exists()
    assert sorted(p.name for p in (tmp_path / "whole").iterdir()) == ["config.json",
                                                                     "model.safetensors"]
    after = TitansModel.load(str(tmp_path / "whole"))
    assert_only_row_changed(TitansModel.load(start), after, GATE_ROW, 0)
    worst, _ = compare_with_server(str(tmp_path / "whole"), 300, seed=8)
    assert worst < TOLERANCE
    assert_resumes_bit_for_bit(train, tmp_path / "part", after, GATE_ROW)
    # Bad arguments: refused with a message, nothing trained.
    for args, message in ((["--head", "5"], "head 5 out of range"),
                          (["--length", "65536"], "more than --length"),
                          (["--length", "600", "--resume"], "no checkpoint"),
                          (["--noise_fraction", "1.5"], "--noise_fraction must be in [0, 1]")):
        bad = run_gate_tool("train_gate", "--model_dir", start, "--out", tmp_path / "bad",
                            "--layer", "1", "--head", "0", "--data", corpus, *args)
        assert bad.returncode == 2 and message in bad.stderr, (args, bad.stderr)
        assert not (tmp_path / "bad").exists()


def test_passkey_probe_counts_keys_and_names_every_miss(tmp_path):
    from titans_torch import passkey
    from titans_torch.passkey_probe import probe, task
    start = random_model(tmp_path, "probe", {"variant": "mal", "attention": {"window": 16}})
    tasks = [task(random.Random(seed), 64) for seed in range(6)]
    for tokens, key, at in tasks:
        text = bytes(tokens[1:]).decode()
        assert text.endswith(passkey.QUESTION + key)
        assert text.index(passkey.needle(key)) == at < 32
    right, misses = probe(TitansModel.load(start), tasks, batch=4)
    # An untrained model misses keys; each miss names its key, digit, probability and reading.
    assert right + len(misses) == len(tasks) and misses
    for miss in misses:
        key, rest = miss.split("@")
        assert key in [k for _, k, _ in tasks] and " d" in rest and " got " in rest
    run = run_gate_tool("passkey_probe", "--model_dir", start, "--length", "64", "--tasks", "6",
                        "--seed", "1")
    assert run.returncode == 0 and run.stdout.startswith(f"{start}: "), run.stderr
    refused = run_gate_tool("passkey_probe", "--model_dir", start, "--tasks", "0")
    assert refused.returncode == 2 and "--tasks at least 1" in refused.stderr, refused.stderr


def test_recall_task_answers_point_at_the_values_with_and_without_question_gaps():
    import random
    from titans_torch import passkey
    for gap in (0, 100):
        for seed in range(5):
            text, answers, order, (begin, end) = passkey.recall_task(random.Random(seed), 4, 256,
                                                                     None, gap)
            assert end - begin == 256 and len(answers) == 8 and sorted(order) == [0, 1, 2, 3]
            for j, i in enumerate(order):
                stated = text[passkey.value_offset(i):passkey.value_offset(i) + 2]
                assert text[answers[2 * j]:answers[2 * j] + 2] == stated
                assert answers[2 * j + 1] == answers[2 * j] + 1
                if j:  # the previous answer's ", " then the gap, then this question's name
                    between = answers[2 * j] - answers[2 * j - 2]
                    assert between == 2 + len(", ") + gap + len("abc="), (gap, between)


def test_fit_keys_finds_both_occurrences_of_the_needles_digits():
    from titans_torch import passkey
    from titans_torch.fit_keys import needle_digits
    for key in ("41884", "10000", "99999"):
        text = "x" * 11 + passkey.needle(key)
        at = needle_digits(11, key)
        assert "".join(text[i] for i in at) == key + key
        assert at[5] > at[4] + 5  # the second occurrence, not the first again


def test_fit_keys_refits_only_one_heads_query_and_key_rows(tmp_path):
    start = random_model(tmp_path, "fit_keys", {"variant": "mal", "attention": {"window": 16}})
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(TEXT[:20000])
    out = tmp_path / "keyed"
    run = run_gate_tool("fit_keys", "--model_dir", start, "--out", out, "--layer", "1",
                        "--head", "1", "--data", corpus, "--tasks", "4", "--iters", "30",
                        "--lr", "0.03", "--threads", "1")
    assert run.returncode == 0, run.stderr
    # The fit's own measure: the contrastive loss on its recorded tasks falls.
    fit_losses = [float(line.split(" train c ")[1].split()[0])
                  for line in run.stdout.splitlines() if line.startswith("it ")]
    assert len(fit_losses) == 3 and fit_losses[-1] < fit_losses[0], run.stdout
    before, after = TitansModel.load(start), TitansModel.load(str(out))
    head_dim, rows = SMALL["head_dim"], slice(SMALL["head_dim"], 2 * SMALL["head_dim"])
    refitted = {f"layers.1.memory.{n}" for n in ("q_proj.weight", "k_proj.weight",
                                                 "q_conv.weight", "k_conv.weight")}
    for name, _, _, _ in before.slots:
        if name in refitted:
            assert not torch.equal(after.p(name)[rows], before.p(name)[rows]), name
            assert torch.equal(after.p(name)[:head_dim], before.p(name)[:head_dim]), name
        else:
            assert torch.equal(after.p(name), before.p(name)), name
    assert "fit_keys" in json.loads((out / "config.json").read_text())["description"]
    # --keep_passkeys holds a passkey's reads in place: on the held-out tasks their queries and
    # keys move less than in the same fit without it (both start unchanged).
    kept = run_gate_tool("fit_keys", "--model_dir", start, "--out", tmp_path / "keyed_kept",
                         "--layer", "1", "--head", "1", "--data", corpus, "--tasks", "4",
                         "--iters", "30", "--lr", "0.03", "--threads", "1",
                         "--keep_passkeys", "1000")
    assert kept.returncode == 0, kept.stderr

    def passkey_change(output, when):
        line = next(l for l in output.splitlines()
                    if l.startswith(f"{when}, held-out passkey digits: loss "))
        return float(line.split(" change ")[1].split()[0])
    assert passkey_change(run.stdout, "before") == passkey_change(kept.stdout, "before") == 0
    assert 0 < passkey_change(kept.stdout, "after") < 0.5 * passkey_change(run.stdout, "after")
    worst, _ = compare_with_server(str(out), 300, seed=9)
    assert worst < TOLERANCE
    bad = run_gate_tool("fit_keys", "--model_dir", start, "--out", tmp_path / "bad", "--layer",
                        "1", "--head", "2", "--data", corpus)
    assert bad.returncode == 2 and "head 2 out of range" in bad.stderr, bad.stderr
    assert not (tmp_path / "bad").exists()


def test_fit_keys_with_head_fits_the_pairs_addressing_and_leaves_the_partner_alone(tmp_path):
    import argparse
    from titans_torch.fit_keys import KeyFit
    start = random_model(tmp_path, "fit_keys_pair", {"variant": "mal",
                                                     "attention": {"window": 16}})
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(TEXT[:20000])
    # The pair's loss is that of the mean of the two softmaxes: a partner with the same rows
    # gives the head's own loss, and a different partner another one.
    model = TitansModel.load(start)
    fit = KeyFit(model, 1, 1, argparse.Namespace(tau=0.1, own=0.0, others=0.0,
                                                        answer_negatives=False))
    tasks = fit.collect([TEXT[:20000].decode("utf-8", "replace")], 3, 5)
    own, other = fit.current_rows(), fit.current_rows(0)
    with torch.no_grad():
        alone, alone_right, _ = fit.losses(tasks, own, own)
        same, same_right, _ = fit.losses(tasks, own, own, partner=own)
        paired, _, _ = fit.losses(tasks, own, own, partner=other)
    assert abs(float(alone) - float(same)) < 1e-5 and alone_right == same_right
    assert abs(float(paired) - float(alone)) > 1e-4
    # --answer_negatives adds the earlier questions' answers as candidates: question j sees
    # the answers of questions 0..j-1 and no later one.
    fit.args.answer_negatives = True
    with torch.no_grad():
        cosines = torch.stack(fit.addressing(tasks[0], own))
        widened, _, _ = fit.losses(tasks, own, own)
    pairs = tasks[0].pairs
    assert cosines.shape == (2, pairs, 2 * pairs)
    answered = torch.isfinite(cosines[:, :, pairs:])
    assert torch.equal(answered[0], torch.ones(pairs, pairs, dtype=torch.bool).tril(-1))
    assert torch.equal(answered[1], answered[0])
    assert float(widened) > float(alone)  # more candidates, a larger cross-entropy
    # --others adds the squared cosines with the other facts' keys.
    fit.args.answer_negatives, fit.args.others = False, 1.0
    with torch.no_grad():
        penalised, _, _ = fit.losses(tasks, own, own)
    assert float(penalised) > float(alone)
    fit.args.others = 0.0
    out = tmp_path / "paired"
    run = run_gate_tool("fit_keys", "--model_dir", start, "--out", out, "--layer", "1",
                        "--head", "1", "--with_head", "0", "--data", corpus, "--tasks", "4",
                        "--iters", "30", "--lr", "0.03", "--threads", "1")
    assert run.returncode == 0, run.stderr
    assert "head 0 alone: val contrast" in run.stdout and "after, alone:" in run.stdout
    fit_losses = [float(line.split(" train c ")[1].split()[0])
                  for line in run.stdout.splitlines() if line.startswith("it ")]
    assert len(fit_losses) == 3 and fit_losses[-1] < fit_losses[0], run.stdout
    before, after = TitansModel.load(start), TitansModel.load(str(out))
    head_dim = SMALL["head_dim"]
    for name in ("q_proj.weight", "k_proj.weight", "q_conv.weight", "k_conv.weight"):
        name = f"layers.1.memory.{name}"
        assert torch.equal(after.p(name)[:head_dim], before.p(name)[:head_dim]), name
        assert not torch.equal(after.p(name)[head_dim:], before.p(name)[head_dim:]), name
    for partner, message in (("1", "--with_head 1 is the head being fitted"),
                             ("2", "head 2 out of range [0, 2)"),
                             ("-1", "head -1 out of range [0, 2)")):
        bad = run_gate_tool("fit_keys", "--model_dir", start, "--out", tmp_path / "bad",
                            "--layer", "1", "--head", "1", "--with_head", partner, "--data",
                            corpus, "--tasks", "1", "--iters", "1")
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr
        assert not (tmp_path / "bad").exists()


def test_train_recall_trains_the_named_parameters_and_resumes_bit_for_bit(tmp_path):
    start = random_model(tmp_path, "train_recall", {"variant": "mal",
                                                    "attention": {"window": 16}})
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(TEXT[:20000])
    trained = r"layers\.1\.(memory\.out_proj|ffn\.)"

    def train(out, steps, *more):
        return run_gate_tool("train_recall", "--model_dir", start, "--out", out, "--data",
                             corpus, "--params", trained, "--steps", steps, "--batch", "2",
                             "--gaps", "64,200", "--pk_len", "600", "--passkey_every", "2",
                             "--eval_every", "0", "--checkpoint_every", "1", "--threads", "1",
                             "--contrast", "1", *more)

    whole = train(tmp_path / "whole", 3)
    assert whole.returncode == 0, whole.stderr
    steps = [line for line in whole.stdout.splitlines() if line.startswith("step ")]
    assert len(steps) == 3 and " pk " in steps[1] and " mf" in steps[0], whole.stdout
    before, after = TitansModel.load(start), TitansModel.load(str(tmp_path / "whole"))
    names = {"layers.1.memory.out_proj.weight", "layers.1.ffn.up.weight",
             "layers.1.ffn.gate.weight", "layers.1.ffn.down.weight"}
    for name, _, _, _ in before.slots:
        assert torch.equal(after.p(name), before.p(name)) == (name not in names), name
    worst, _ = compare_with_server(str(tmp_path / "whole"), 300, seed=10)
    assert worst < TOLERANCE
    assert_resumes_bit_for_bit(train, tmp_path / "part", after, names)

    # --anchor pulls the trained tensors back toward the start: the same run moves them less.
    def relative_change(model):
        return sum(((model.p(n) - before.p(n)).pow(2).sum() / before.p(n).pow(2).sum()).item()
                   for n in names)
    anchored = train(tmp_path / "anchored", 3, "--anchor", "1e4")
    assert anchored.returncode == 0, anchored.stderr
    pulled = TitansModel.load(str(tmp_path / "anchored"))
    assert 0 < relative_change(pulled) < 0.9 * relative_change(after)
    # --noise_fraction 1 puts the passkey stream (step 2) in the noise: other weights.
    noisy = train(tmp_path / "noisy", 3, "--noise_fraction", "1")
    assert noisy.returncode == 0, noisy.stderr
    in_noise = TitansModel.load(str(tmp_path / "noisy"))
    assert any(not torch.equal(in_noise.p(n), after.p(n)) for n in names)
    # --short_noise_every 1: the steps that are not passkey streams (2 of 3) are batches of
    # short passkeys in the noise, which train the weights otherwise.
    short = train(tmp_path / "short", 3, "--short_noise_every", "1",
                  "--short_noise_lengths", "300")
    assert short.returncode == 0, short.stderr
    kinds = [line.split()[2] for line in short.stdout.splitlines() if line.startswith("step ")]
    assert kinds == ["pkn300", "pk", "pkn300"], short.stdout
    in_short_noise = TitansModel.load(str(tmp_path / "short"))
    assert any(not torch.equal(in_short_noise.p(n), after.p(n)) for n in names)
    # --question_gaps puts filler between the questions of the recall steps (steps 1 and 3).
    spaced = train(tmp_path / "spaced", 3, "--question_gaps", "40")
    assert spaced.returncode == 0, spaced.stderr
    kinds = [line.split()[2] for line in spaced.stdout.splitlines() if line.startswith("step ")]
    assert kinds[1] == "pk" and all(k.endswith("q40") for k in kinds[::2]), spaced.stdout
    with_gaps = TitansModel.load(str(tmp_path / "spaced"))
    assert any(not torch.equal(with_gaps.p(n), after.p(n)) for n in names)
    bad = train(tmp_path / "bad", 1, "--question_gaps", "x")
    assert bad.returncode == 2 and "--question_gaps must be" in bad.stderr, bad.stderr
    # --head auto contrasts the recall head, as fit_keys picks it: the same run as naming that
    # head, another run than naming the other (the contrast acts through the q rows trained).
    picked, _ = recall_head(before, 1)

    def contrast_on(head):
        out = tmp_path / f"head_{head}"
        done = run_gate_tool("train_recall", "--model_dir", start, "--out", out, "--data",
                             corpus, "--params", r"layers\.1\.memory\.q_proj", "--steps", "1",
                             "--batch", "2", "--gaps", "64", "--eval_every", "0",
                             "--threads", "1", "--contrast", "10", "--head", head)
        assert done.returncode == 0, done.stderr
        return done.stdout, TitansModel.load(str(out)).p("layers.1.memory.q_proj.weight")
    said, by_auto = contrast_on("auto")
    assert f"recall head of layer 1: {picked} " in said, said
    assert torch.equal(by_auto, contrast_on(str(picked))[1])
    assert not torch.equal(by_auto, contrast_on(str(1 - picked))[1])
    # --only_head: of layer 1's memory, only the named head's share of each tensor moves; the
    # other head's rows, columns, gate entries and initial weights stay bit for bit.
    from titans_torch.train_recall import head_mask
    only = tmp_path / "only_head"
    done = run_gate_tool("train_recall", "--model_dir", start, "--out", only, "--data", corpus,
                         "--params", r"layers\.1\.memory\.", "--steps", "2", "--batch", "2",
                         "--gaps", "64", "--pk_len", "600", "--passkey_every", "2",
                         "--eval_every", "0", "--threads", "1", "--contrast", "1", "--head",
                         "1", "--only_head")
    assert done.returncode == 0, done.stderr
    trained_head = TitansModel.load(str(only))
    moved = 0
    for name, _, _, _ in before.slots:
        if not name.startswith("layers.1.memory."):
            assert torch.equal(trained_head.p(name), before.p(name)), name
            continue
        mine = head_mask(before, name, 1, 1).bool()
        other = head_mask(before, name, 1, 0).bool()
        assert not (mine & other).any() and (mine | other).all(), name
        assert torch.equal(trained_head.p(name)[other], before.p(name)[other]), name
        moved += not torch.equal(trained_head.p(name)[mine], before.p(name)[mine])
    assert moved >= 10, moved  # the projections, convolutions, gates, memory and output
    for args, message in ((["--params", "no_such_parameter"], "names no parameter"),
                          (["--params", "("], "not a regular expression"),
                          (["--head", "5"], "head 5 out of range"),
                          (["--anchor", "-1"], "must be >= 0"),
                          (["--noise_fraction", "2"], "--noise_fraction must be"),
                          (["--gaps", "a,b"], "--gaps must be"),
                          (["--short_noise_every", "-1"], "--short_noise_every must be"),
                          (["--short_noise_lengths", "100"], "--short_noise_lengths must be"),
                          (["--resume"], "no checkpoint")):
        bad = run_gate_tool("train_recall", "--model_dir", start, "--out", tmp_path / "bad",
                            "--data", corpus, *args)
        assert bad.returncode == 2 and message in bad.stderr, (args, bad.stderr)
        assert not (tmp_path / "bad").exists()


def test_add_memory_head_keeps_the_function_and_the_server_serves_it(tmp_path):
    from titans_torch.model import memory_heads
    start = random_model(tmp_path, "narrow", {"variant": "mal", "attention": {"window": 16}})
    out = tmp_path / "wider"
    done = run_gate_tool("add_memory_head", "--model_dir", start, "--out", out, "--clone", "1")
    assert done.returncode == 0, done.stderr
    before, after = TitansModel.load(start), TitansModel.load(str(out))
    assert memory_heads(before.config, 0) == 2 and memory_heads(after.config, 0) == 3
    assert after.config["memory"]["num_heads"] == 3  # every layer the same: one count
    assert after.config["num_heads"] == 2  # the attention keeps its heads
    dh = before.config["head_dim"]
    copied = after.p("layers.0.memory.k_proj.weight")
    assert torch.equal(copied[2 * dh:], before.p("layers.0.memory.k_proj.weight")[dh:2 * dh])
    assert torch.equal(after.p("layers.1.memory.theta_proj.bias")[2],
                       before.p("layers.1.memory.theta_proj.bias")[1])
    # The default --new_output zero: the original's output columns as they were, the copy's zero.
    out_proj = after.p("layers.1.memory.out_proj.weight")
    assert torch.equal(out_proj[:, :2 * dh], before.p("layers.1.memory.out_proj.weight"))
    assert not out_proj[:, 2 * dh:].any()
    halved = tmp_path / "halved"
    done = run_gate_tool("add_memory_head", "--model_dir", start, "--out", halved, "--clone", "1",
                         "--new_output", "half")
    assert done.returncode == 0, done.stderr
    half = TitansModel.load(str(halved))
    original = before.p("layers.0.memory.out_proj.weight")[:, dh:2 * dh]
    for columns in (slice(dh, 2 * dh), slice(2 * dh, 3 * dh)):
        assert torch.equal(half.p("layers.0.memory.out_proj.weight")[:, columns], original * 0.5)
    tokens = list(TEXT[:500])
    with torch.no_grad():
        old, _ = before.score(tokens, None)
        for model in (after, half):
            new, _ = model.score(tokens, None)
            assert max(abs(a - b) for a, b in zip(old, new)) < 1e-5
    worst, _ = compare_with_server(str(out), 300, seed=11)
    assert worst < TOLERANCE
    # --layers 1: only layer 1 takes the copy; layer 0 keeps its tensors, and the server reads
    # the per-layer counts as the Python model does.
    one = tmp_path / "one_layer"
    done = run_gate_tool("add_memory_head", "--model_dir", start, "--out", one, "--clone", "1",
                         "--layers", "1")
    assert done.returncode == 0, done.stderr
    only = TitansModel.load(str(one))
    assert only.config["memory"]["num_heads"] == [2, 3]
    assert [memory_heads(only.config, i) for i in (0, 1)] == [2, 3]
    for name in ("k_proj.weight", "theta_proj.bias", "initial_weights.0", "out_proj.weight"):
        assert torch.equal(only.p("layers.0.memory." + name), before.p("layers.0.memory." + name))
    assert torch.equal(only.p("layers.1.memory.theta_proj.bias")[2],
                       before.p("layers.1.memory.theta_proj.bias")[1])
    with torch.no_grad():
        new, _ = only.score(tokens, None)
        assert max(abs(a - b) for a, b in zip(old, new)) < 1e-5
    worst, _ = compare_with_server(str(one), 300, seed=11)
    assert worst < TOLERANCE
    mac = random_model(tmp_path, "mac", {"variant": "mac"})
    for model_dir, args, message in ((mac, ["--clone", "0"], "variant mac cannot"),
                                     (start, ["--clone", "2"], "--clone 2 out of range"),
                                     (start, ["--clone", "0", "--layers", "2"],
                                      "layer 2 out of range"),
                                     (one, ["--clone", "2", "--layers", "0"],
                                      "--clone 2 out of range [0, 2) in layer 0")):
        bad = run_gate_tool("add_memory_head", "--model_dir", model_dir, "--out",
                            tmp_path / "bad", *args)
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr
        assert not (tmp_path / "bad").exists()


def test_drop_memory_head_removes_a_silent_head_and_the_server_serves_it(tmp_path):
    from titans_torch.model import memory_heads
    start = random_model(tmp_path, "narrow", {"variant": "mal", "attention": {"window": 16}})
    wide = tmp_path / "wide"
    done = run_gate_tool("add_memory_head", "--model_dir", start, "--out", wide, "--clone", "0")
    assert done.returncode == 0, done.stderr
    # Layer 0's copy reads nothing (zero output columns): removing it gives layer 0 back exactly
    # and keeps layer 1's copy.
    out = tmp_path / "dropped"
    done = run_gate_tool("drop_memory_head", "--model_dir", wide, "--out", out, "--layers", "0",
                         "--head", "2")
    assert done.returncode == 0, done.stderr
    before, wider, after = (TitansModel.load(str(d)) for d in (start, wide, out))
    assert after.config["memory"]["num_heads"] == [2, 3]
    assert [memory_heads(after.config, i) for i in (0, 1)] == [2, 3]
    for name, _, _, _ in after.slots:
        if name.startswith("layers.0.memory."):
            assert torch.equal(after.p(name), before.p(name)), name
        else:
            assert torch.equal(after.p(name), wider.p(name)), name
    tokens = list(TEXT[:500])
    with torch.no_grad():
        old, _ = wider.score(tokens, None)
        new, _ = after.score(tokens, None)
    assert max(abs(a - b) for a, b in zip(old, new)) < 1e-5
    worst, _ = compare_with_server(str(out), 300, seed=12)
    assert worst < TOLERANCE
    # A head in the middle: the heads after it move down by one.
    middle = tmp_path / "middle"
    done = run_gate_tool("drop_memory_head", "--model_dir", start, "--out", middle, "--layers",
                         "1", "--head", "0", "--allow_change")
    assert done.returncode == 0, done.stderr
    dh = before.config["head_dim"]
    moved = TitansModel.load(str(middle))
    assert torch.equal(moved.p("layers.1.memory.k_proj.weight"),
                       before.p("layers.1.memory.k_proj.weight")[dh:])
    assert torch.equal(moved.p("layers.1.memory.out_proj.weight"),
                       before.p("layers.1.memory.out_proj.weight")[:, dh:])
    assert torch.equal(moved.p("layers.1.memory.eta_proj.bias"),
                       before.p("layers.1.memory.eta_proj.bias")[1:])
    one_head = tmp_path / "one_head"
    mac = random_model(tmp_path, "mac", {"variant": "mac"})
    for model_dir, args, message in (
            (start, ["--layers", "1", "--head", "0"], "output columns are not zero"),
            (mac, ["--layers", "0", "--head", "0"], "variant mac cannot"),
            (start, ["--layers", "2", "--head", "0"], "layer 2 out of range"),
            (start, ["--layers", "0", "--head", "2"], "--head 2 out of range [0, 2) in layer 0"),
            (start, ["--layers", "0,x", "--head", "0"], "--layers must be comma-separated"),
            (middle, ["--layers", "1", "--head", "0", "--allow_change"], "has one memory head")):
        bad = run_gate_tool("drop_memory_head", "--model_dir", model_dir, "--out", one_head, *args)
        assert bad.returncode == 2 and message in bad.stderr, (args, bad.stderr)
        assert not one_head.exists()


def test_train_gate_streams_text_or_noise():
    from titans_torch import passkey
    from titans_torch.train_gate import passkey_stream
    texts = [TEXT.decode("utf-8", "replace")]
    noise_bytes = set(passkey.NOISE.encode())
    kinds = []
    for seed in range(40):
        tokens, is_text, is_answer = passkey_stream(random.Random(seed), texts, 3000, 0.5)
        stream = bytes(tokens[1:])
        haystack = bytes(b for b, t in zip(stream, is_text.tolist()) if t)
        # The answer is the needle's key, at the end, after the question.
        key = stream[-5:].decode()
        assert is_answer.sum() == 5 and is_answer[-5:].all()
        assert passkey.needle(key).encode() in stream
        assert stream.endswith((passkey.QUESTION + key).encode())
        noise = set(haystack) <= noise_bytes and passkey.NOISE.encode()[:40] in stream
        assert noise or haystack[200:260] in TEXT, seed
        kinds.append(noise)
    assert 10 <= sum(kinds) <= 30  # about half of 40 in the noise
    assert not any(set(bytes(passkey_stream(random.Random(s), texts, 3000)[0][1:200])) <=
                   noise_bytes for s in range(5))
    assert all(set(bytes(passkey_stream(random.Random(s), texts, 3000, 1.0)[0][1:200])) <=
               noise_bytes for s in range(5))


@pytest.mark.parametrize("variant", ["mal", "mac"])
@pytest.mark.parametrize("target", [0, 1])
def test_recall_head_is_the_head_whose_gate_opens_on_digits(tmp_path, variant, target):
    # A model whose first-layer memory input carries a "digit" feature in dimension 0 (digits'
    # embeddings only; the memory reads the RMS-normalised embedding there), and whose head
    # `target` alone opens its theta gate on it: that head is the recall head, the other's ratio
    # is 1. MAC reads its memory once per segment, so the probe spans several reads there.
    path = random_model(tmp_path, f"gate_{variant}",
                        {"variant": variant, "attention": {"segment_size": 16}})
    model = TitansModel.load(path)
    with torch.no_grad():
        embedding = model.p("embedding.weight")
        embedding[:, 0] = 0
        embedding[ord("0"):ord("9") + 1, 0] = 3 * embedding.abs().max()
        weight = model.p("layers.0.memory.theta_proj.weight")
        weight.zero_()
        weight[target, 0] = 4.0
        model.p("layers.0.memory.theta_proj.bias").fill_(-2.0)
    head, ratios = recall_head(model, 0)
    assert head == target
    # MAC's memory reads the attention output, where the digit feature arrives diluted.
    assert ratios[target] > (3 if variant == "mal" else 1.1)
    assert ratios[1 - target] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="layer 2 out of range"):
        recall_head(model, 2)


def test_memory_probe_reports_every_head(tmp_path):
    model = random_model(tmp_path, "probe", {"variant": "mal", "attention": {"window": 16}})
    probe = os.path.join(SOURCE, "scripts", "memory-probe.py")

    def run(*args):
        return subprocess.run([sys.executable, probe, *args, model, "--licences", "--trials", "2"],
                              capture_output=True, text=True, timeout=600, check=True).stdout

    rows = [l for l in run("addressing", "--gap", "128").splitlines() if l.startswith("| ")]
    assert len(rows) == 1 + 2 * 2  # header, then 2 layers x 2 heads
    for row in rows[1:]:
        closest, asked = row.split("|")[3].split("/")
        assert 0 <= int(closest) <= int(asked) == 2 * 4
    rows = [l for l in run("needle", "--lengths", "512").splitlines() if l.startswith("| 512 ")]
    assert len(rows) == 2
    rows = [l for l in run("trace", "--lengths", "256,512").splitlines() if l.startswith("| ")]
    assert [r.split("|")[1].strip() for r in rows[1:]] == ["text", "text", "noise", "noise"]
    # Two different keys leave two different reads right after the needle.
    assert float(rows[1].split("|")[3]) > 0
    gates = run("gates").splitlines()
    for kind in ("text", "noise", "key digits in text"):
        rows = [l for l in gates if l.startswith(f"| {kind} |")]
        assert len(rows) == 2 * 2 and all(0 < float(r.split("|")[7]) <= 0.1 for r in rows)


def test_memory_num_heads_is_checked_as_the_server_checks_it():
    from titans_torch.io import complete_config
    from titans_torch.model import memory_heads
    assert memory_heads(complete_config({"variant": "mal", "memory": {"num_heads": 5}}), 1) == 5
    assert memory_heads(complete_config({"variant": "mal", "num_heads": 3}), 0) == 3
    assert memory_heads(complete_config({"variant": "mal", "num_heads": 3,
                                         "memory": {"num_heads": 0}}), 1) == 3
    per_layer = complete_config({"variant": "mal", "memory": {"num_heads": [4, 5]}})
    assert [memory_heads(per_layer, i) for i in (0, 1)] == [4, 5]
    for raw, message in (({"variant": "mac", "num_heads": 4, "memory": {"num_heads": 5}},
                          "must equal num_heads for MAC"),
                         ({"variant": "mal", "memory": {"num_heads": -1}}, "must be in [0, 1024]"),
                         ({"variant": "mal", "memory": {"num_heads": 2.5}}, "must be in [0, 1024]"),
                         ({"variant": "mal", "memory": {"num_heads": [4]}},
                          "must list one count per layer (2), got 1"),
                         ({"variant": "mal", "memory": {"num_heads": [4, 0]}},
                          "must list counts in [1, 1024]"),
                         ({"variant": "mal", "memory": {"num_heads": [4, True]}},
                          "must list counts in [1, 1024]"),
                         ({"variant": "mac", "num_heads": 4, "memory": {"num_heads": [4, 5]}},
                          "must equal num_heads for MAC")):
        with pytest.raises(ValueError, match=re.escape(message)):
            complete_config(raw)
