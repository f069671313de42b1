"""The titans client package against a real titans-server (every call, cancellation, auth), and
against a scripted fake for retries, routing metadata and deadlines."""
import asyncio
import io
import os
import re

import grpc
import pytest

import titans
import titans.aio
from titans import _common
from conftest import OTHER_TOKEN, TOKEN, running_server
from titans_testutil import free_port, self_signed

TEXT = "In the beginning God created the heaven and the earth. "


@pytest.fixture
def client(server_address):
    with titans.Client(server_address, token=TOKEN) as c:
        yield c


def greedy(session, n=12, prompt=None):
    return session.generate(prompt, max_tokens=n, temperature=0, stop_at_eos=False).result()


def test_model_metadata_and_version(client):
    model = client.get_model()
    assert model.parameters > 0 and model.vocab_size > 0
    assert model.server_version == titans.__version__
    assert [m.name for m in client.list_models()] == [model.name]


def test_session_lifecycle(client):
    session = client.create_session(labels={"suite": "pyclient", "case": "lifecycle"})
    assert len(session.id) >= 32 and session.info.position == 0
    assert session.info.labels == {"suite": "pyclient", "case": "lifecycle"}
    named = client.create_session("py-named-session", idle_ttl_seconds=600)
    assert named.id == "py-named-session" and named.info.idle_ttl_seconds == 600
    with pytest.raises(titans.TitansError) as error:
        client.create_session("py-named-session")
    assert error.value.code == grpc.StatusCode.ALREADY_EXISTS
    listed = {s.session_id for s in client.list_sessions(labels={"case": "lifecycle"},
                                                         page_size=1)}
    assert listed == {session.id}
    assert client.get_session(named.id).session_id == named.id
    named.close()
    session.close()
    with pytest.raises(titans.TitansError) as error:
        client.get_session(session.id)
    assert error.value.code == grpc.StatusCode.NOT_FOUND


def test_append_every_kind_of_input(client, monkeypatch):
    with client.create_session() as session:
        r = session.append(TEXT)
        assert (r.tokens_consumed, r.position) == (len(TEXT), len(TEXT))
        r = session.append(TEXT.encode())
        assert r.position == 2 * len(TEXT)
        r = session.append([72, 105, 33])
        assert (r.tokens_consumed, r.position) == (3, 2 * len(TEXT) + 3)
        # A file goes through AppendStream in pieces (small ones here), reported as sent.
        monkeypatch.setattr(_common, "CHUNK_BYTES", 100)
        reports = []
        body = (TEXT * 10).encode()
        r = session.append(io.BytesIO(body), progress=lambda sent, total: reports.append(
            (sent, total)))
        assert r.tokens_consumed == len(body)
        assert [sent for sent, _ in reports] == list(range(100, len(body), 100)) + [len(body)]
        assert all(total == len(body) for _, total in reports)
        # A text-mode file is encoded to UTF-8; a multi-byte character split across two pieces
        # is joined again by the server.
        r = session.append(io.StringIO("é" * 150))
        assert r.tokens_consumed == 300
        assert session.refresh().position == 2 * len(TEXT) + 3 + len(body) + 300


def test_inputs_over_the_threshold_are_streamed(client, monkeypatch):
    monkeypatch.setattr(_common, "STREAM_THRESHOLD", 64)
    monkeypatch.setattr(_common, "CHUNK_BYTES", 50)
    monkeypatch.setattr(_common, "CHUNK_TOKENS", 50)
    with client.create_session() as session:
        reports = []
        r = session.append(TEXT * 3, progress=lambda sent, total: reports.append(sent))
        assert r.tokens_consumed == 3 * len(TEXT) and len(reports) == 4
        r = session.append(list(range(65, 65 + 26)) * 5)
        assert r.tokens_consumed == 130


def test_bad_input_is_one_error_type_with_the_code(client):
    with client.create_session() as session:
        session.append(TEXT)
        with pytest.raises(titans.TitansError) as error:
            session.append([1, 2, 10 ** 6])
        assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert error.value.method == "Append" and error.value.details
        with pytest.raises(titans.TitansError) as error:
            session.append(b"\xff\xfe not utf-8")
        assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert session.refresh().position == len(TEXT)  # neither failed append changed it
        with pytest.raises(TypeError):
            session.append([1.5])


def test_generate_streams_deltas_with_finish_reason_and_timings(client):
    with client.create_session() as session:
        session.append(TEXT * 4)
        generation = session.generate("And God said", max_tokens=24, temperature=0.8, seed=3,
                                      stop_at_eos=False)
        deltas = list(generation)
        assert len(deltas) >= 1
        assert sum(len(d.token_ids) for d in deltas) == 24
        assert generation.finish_reason == titans.FinishReason.LENGTH
        assert generation.text == "".join(d.text for d in deltas)
        t = generation.timings
        assert t.generated_tokens == 24 and t.prompt_tokens == len("And God said")
        assert 0 < t.time_to_first_token_seconds <= t.total_seconds
        assert deltas[-1].position == 4 * len(TEXT) + len("And God said") + 24
        # The same seed from the same state gives the same text.
        fork = session.fork(position=4 * len(TEXT))
        again = fork.generate("And God said", max_tokens=24, temperature=0.8, seed=3,
                              stop_at_eos=False).result()
        assert again.text == generation.text and again.token_ids == generation.token_ids
        fork.close()


def test_one_stream_for_many_turns(client):
    with client.create_session() as session:
        with session.stream() as stream:
            r = stream.append(TEXT)
            assert (r.tokens_consumed, r.position) == (len(TEXT), len(TEXT))
            deltas = list(stream.generate(" And", max_tokens=8, temperature=0,
                                          stop_at_eos=False))
            assert sum(len(d.token_ids) for d in deltas) == 8
            assert stream.last_generation.finish_reason == titans.FinishReason.LENGTH
            with pytest.raises(titans.TitansError) as error:  # a failed command...
                stream.append([10 ** 6])
            assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
            r = stream.append(TEXT)  # ...and the stream goes on
            assert r.position == 2 * len(TEXT) + len(" And") + 8
        # The same turns as separate calls give the same text (greedy).
        fork = session.fork(position=len(TEXT))
        assert greedy(fork, 8, " And").text == "".join(d.text for d in deltas)
        fork.close()


def test_stop_string(client):
    with client.create_session() as session:
        session.append(TEXT * 4)
        result = session.generate("In the", max_tokens=200, stop=["e"],
                                  temperature=0).result()
        assert result.finish_reason == titans.FinishReason.STOP
        assert "e" not in result.text and len(result.token_ids) >= 1


def test_cancel_a_generation(client):
    with client.create_session() as session:
        session.append(TEXT)
        generation = session.generate(max_tokens=4096, temperature=0, stop_at_eos=False)
        first = next(iter(generation))
        generation.cancel()
        rest = list(generation)
        assert generation.finish_reason == titans.FinishReason.CANCELLED
        received = len(first.token_ids) + sum(len(d.token_ids) for d in rest)
        assert 1 <= received < 4096
        # The session keeps the tokens generated so far (a step in flight when the cancel
        # arrived may add its token after the client stopped reading) and goes on working: the
        # append is taken after the generation has ended.
        position = session.append("more").position - 4
        assert len(TEXT) + received <= position < len(TEXT) + 4096
        assert session.refresh().position == position + 4


def test_leaving_a_generation_block_early_cancels_it(client):
    with client.create_session() as session:
        session.append(TEXT)
        with session.generate(max_tokens=4096, temperature=0, stop_at_eos=False) as generation:
            for delta in generation:
                break
        assert generation.finish_reason is None  # not read to the end by the caller
        position = session.append("after").position - 5  # queued behind the generation
        assert len(TEXT) + 1 <= position < len(TEXT) + 4096
        with session.generate(max_tokens=3, temperature=0, stop_at_eos=False) as finished:
            assert len(finished.result().token_ids) == 3
        assert finished.finish_reason == titans.FinishReason.LENGTH


def test_fork_rewind_score(client):
    with client.create_session() as session:
        session.append(TEXT * 3)
        mark = session.info.position if session.info.position else session.refresh().position
        probe = [ord(c) for c in "the earth"]
        before = session.score(probe)
        assert len(before.logprobs) == len(probe) and all(p < 0 for p in before.logprobs)
        assert session.refresh().position == mark  # score without commit leaves it
        fork = session.fork("py-fork-of-session")
        assert fork.id == "py-fork-of-session" and fork.info.position == mark
        assert greedy(fork).text == greedy(session).text
        session.append("Something else entirely. " * 4)
        info = session.rewind(mark)
        assert info.position == mark
        assert session.score(probe).logprobs == before.logprobs  # bit-identical after rewind
        committed = session.score(probe, commit=True)
        assert committed.position == mark + len(probe)
        fork.close()
        with pytest.raises(titans.TitansError) as error:
            session.rewind(10 ** 9)
        assert error.value.code == grpc.StatusCode.OUT_OF_RANGE


def test_stateless_score(client):
    tokens = [ord(c) for c in "In the beginning"]
    scored = client.score(tokens)
    with client.create_session() as session:
        assert session.score(tokens).logprobs == scored.logprobs


def test_export_and_import(client):
    with client.create_session(labels={"case": "export"}) as session:
        session.append(TEXT * 2)
        snapshot = session.export()
        assert snapshot.position == 2 * len(TEXT) and snapshot.data and snapshot.model_fingerprint
        with client.import_session(snapshot, "py-imported", labels={"from": "export"}) as copy:
            assert copy.info.position == snapshot.position
            assert copy.info.labels == {"from": "export"}
            assert greedy(copy).token_ids == greedy(session).token_ids
        with pytest.raises(titans.TitansError) as error:
            client.import_session(snapshot.data[:-8] + b"\0" * 8)
        assert error.value.code in (grpc.StatusCode.DATA_LOSS, grpc.StatusCode.INVALID_ARGUMENT)
        written = session.export_to_file("py-client-snapshot")
        assert written.position == session.refresh().position and not written.data
        with client.import_session(file_name="py-client-snapshot") as from_file:
            assert from_file.info.position == written.position


def test_auth_failures(server_address):
    for token in ("", "not-a-token"):
        with titans.Client(server_address, token=token, retry=titans.RetryPolicy(1)) as c:
            with pytest.raises(titans.TitansError) as error:
                c.create_session()
            assert error.value.code == grpc.StatusCode.UNAUTHENTICATED
    # Sessions are scoped per principal: bob cannot see alice's.
    with titans.Client(server_address, token=TOKEN) as alice, \
            titans.Client(server_address, token=OTHER_TOKEN) as bob:
        with alice.create_session() as session:
            with pytest.raises(titans.TitansError) as error:
                bob.session(session.id).append("hello")
            assert error.value.code == grpc.StatusCode.NOT_FOUND


def test_token_from_environment(server_address, monkeypatch):
    monkeypatch.setenv("TITANS_TOKEN", TOKEN)
    with titans.Client(server_address) as c:
        assert c.get_model().parameters > 0


def test_asyncio_client(server_address):
    async def main():
        async with titans.aio.AsyncClient(server_address, token=TOKEN) as client:
            await client.wait_until_ready()
            assert (await client.get_model()).server_version == titans.__version__
            async with await client.create_session(labels={"case": "aio"}) as session:
                r = await session.append(TEXT * 2)
                assert r.position == 2 * len(TEXT)
                r = await session.append(io.BytesIO(TEXT.encode()))  # streamed
                assert r.position == 3 * len(TEXT)
                generation = session.generate(max_tokens=16, temperature=0, stop_at_eos=False)
                deltas = [d async for d in generation]
                assert sum(len(d.token_ids) for d in deltas) == 16
                assert generation.finish_reason == titans.FinishReason.LENGTH
                # The blocking client sees the same session and agrees on the greedy text.
                with titans.Client(server_address, token=TOKEN) as sync:
                    fork = sync.session(session.id).fork(position=3 * len(TEXT))
                    expected = greedy(fork, 16)
                    fork.close()
                assert generation.text == expected.text
                fork = await session.fork()
                info = await fork.rewind(3 * len(TEXT))
                assert info.position == 3 * len(TEXT)
                snapshot = await fork.export()
                written = await fork.export_to_file("py-aio-snapshot")
                assert written.position == snapshot.position and not written.data
                from_file = await client.import_session(file_name="py-aio-snapshot")
                assert from_file.info.position == snapshot.position
                await from_file.close()
                copy = await client.import_session(snapshot)
                probe = [ord(c) for c in "earth"]
                assert (await copy.score(probe)).logprobs == (await fork.score(probe)).logprobs
                await copy.close()
                await fork.close()
                listed = [s.session_id async for s in client.list_sessions(labels={"case": "aio"})]
                assert listed == [session.id]
                # Many turns over one Stream call.
                async with session.stream() as stream:
                    r = await stream.append(TEXT)
                    turn = [d async for d in stream.generate(" And", max_tokens=4,
                                                             temperature=0, stop_at_eos=False)]
                    assert sum(len(d.token_ids) for d in turn) == 4
                    with pytest.raises(titans.TitansError) as error:
                        await stream.append([10 ** 6])
                    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
                    again = await stream.append("x")
                    assert again.position == r.position + len(" And") + 4 + 1
                # Cancellation.
                long = session.generate(max_tokens=4096, temperature=0, stop_at_eos=False)
                async for _ in long:
                    long.cancel()
                assert long.finish_reason == titans.FinishReason.CANCELLED
            with pytest.raises(titans.TitansError) as error:
                await client.get_session(session.id)
            assert error.value.code == grpc.StatusCode.NOT_FOUND
        async with titans.aio.AsyncClient(server_address, token="wrong") as bad:
            with pytest.raises(titans.TitansError) as error:
                await bad.get_model()
            assert error.value.code == grpc.StatusCode.UNAUTHENTICATED
    asyncio.run(main())


# Against the scripted fake ---------------------------------------------------------------------

FAST = titans.RetryPolicy(max_attempts=4, initial_backoff=0.001, max_backoff=0.01)


def test_idempotent_calls_are_retried(scripted):
    address, servicer = scripted
    servicer.failures["GetSession"] = [grpc.StatusCode.UNAVAILABLE,
                                       grpc.StatusCode.RESOURCE_EXHAUSTED]
    with titans.Client(address, retry=FAST) as c:
        assert c.get_session("s1").position == 7
    assert [m for m, _, _ in servicer.calls] == ["GetSession"] * 3


def test_retries_give_up_after_max_attempts(scripted):
    address, servicer = scripted
    servicer.failures["GetModel"] = [grpc.StatusCode.UNAVAILABLE] * 10
    with titans.Client(address, retry=FAST) as c:
        with pytest.raises(titans.TitansError) as error:
            c.get_model()
    assert error.value.code == grpc.StatusCode.UNAVAILABLE
    assert len(servicer.calls) == 4


def test_other_errors_and_appends_are_not_retried(scripted):
    address, servicer = scripted
    servicer.failures["Append"] = [grpc.StatusCode.UNAVAILABLE]
    servicer.failures["GetModel"] = [grpc.StatusCode.INTERNAL]
    with titans.Client(address, retry=FAST) as c:
        with pytest.raises(titans.TitansError) as error:
            c.session("s1").append("hello")
        assert error.value.code == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(titans.TitansError) as error:
            c.get_model()
        assert error.value.code == grpc.StatusCode.INTERNAL
    assert [m for m, _, _ in servicer.calls] == ["Append", "GetModel"]


def test_a_retried_close_that_finds_the_session_gone_succeeds(scripted):
    address, servicer = scripted
    servicer.failures["CloseSession"] = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND]
    with titans.Client(address, retry=FAST) as c:
        c.session("s1").close()
    servicer.failures["CloseSession"] = [grpc.StatusCode.NOT_FOUND]
    with titans.Client(address, retry=FAST) as c:
        with pytest.raises(titans.TitansError) as error:
            c.session("s1").close()  # NOT_FOUND on the first attempt is the caller's to know
        assert error.value.code == grpc.StatusCode.NOT_FOUND


def test_routing_header_token_and_deadline_on_every_call(scripted):
    address, servicer = scripted
    with titans.Client(address, token="t0k", timeout=12.5) as c:
        c.get_session("routed")
        c.session("routed").append("hi")
        c.get_model()
    for method, md, remaining in servicer.calls:
        assert md.get("authorization") == "Bearer t0k"
        assert remaining is not None and 0 < remaining < 4000  # stream_timeout 3600 s
    with titans.Client(address) as c:
        created = c.create_session()
    assert re.fullmatch(r"s-[0-9a-f]{32}", created.id)
    by_method = {m: (md, remaining) for m, md, remaining in servicer.calls}
    assert by_method["CreateSession"][0].get("x-titans-session") == created.id
    assert by_method["GetSession"][0].get("x-titans-session") == "routed"
    assert by_method["Append"][0].get("x-titans-session") == "routed"
    assert "x-titans-session" not in by_method["GetModel"][0]
    assert by_method["GetModel"][1] < 13  # 12.5 s, as the wire rounds it


def test_async_retries(scripted):
    address, servicer = scripted
    servicer.failures["GetSession"] = [grpc.StatusCode.UNAVAILABLE]

    async def main():
        async with titans.aio.AsyncClient(address, retry=FAST) as c:
            assert (await c.get_session("s2")).position == 7
    asyncio.run(main())
    assert len(servicer.calls) == 2
    assert servicer.calls[0][1].get("x-titans-session") == "s2"


def test_unreachable_server_fails_within_the_deadline():
    with titans.Client(f"127.0.0.1:{free_port()}", timeout=1,
                       retry=titans.RetryPolicy(1)) as c:
        with pytest.raises(titans.TitansError) as error:
            c.get_model()
        assert error.value.code in (grpc.StatusCode.UNAVAILABLE,
                                    grpc.StatusCode.DEADLINE_EXCEEDED)
        with pytest.raises(titans.TitansError):
            c.wait_until_ready(timeout=0.5)


def test_example_streams_a_file_and_answers(server_address, tmp_path, monkeypatch):
    """python/examples/ask_file.py, as a user runs it: the README's passkey, 4 KiB back."""
    import subprocess
    import sys
    filler = ("The grass is green. The sky is blue. The sun is yellow. Here we go. "
              "There and back again. ") * 48
    document = tmp_path / "memo.txt"
    document.write_text(" The pass key is 71432. Remember it. 71432 is the pass key. " + filler)
    example = os.path.join(os.path.dirname(__file__), "..", "..", "python", "examples",
                           "ask_file.py")
    out = subprocess.run(
        [sys.executable, example, str(document), " What is the pass key? The pass key is ",
         "--address", server_address, "--max_tokens", "5"],
        env={**os.environ, "TITANS_TOKEN": TOKEN}, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(" What is the pass key? The pass key is ")
    size = document.stat().st_size
    assert f"{size:,} tokens appended" in out.stderr and "[length;" in out.stderr
    # The progress display reached the whole file: tqdm's bar where it is installed, else text.
    import importlib.util
    if importlib.util.find_spec("tqdm") is None:
        assert f"append: {size:,} bytes sent 100.0%" in out.stderr
    else:
        assert "100%" in out.stderr


def test_tls_and_mutual_tls(tmp_path):
    """tls=True with the server's CA; mutual TLS with a client certificate; a client without
    one is refused."""
    _, server_pem, server_key, server_cert = self_signed(str(tmp_path), "server")
    with running_server(os.environ["TITANS_MODEL_DIR"],
                        [f"--tls_cert={server_cert}", f"--tls_key={server_key}"]) as address:
        with titans.Client(address, tls=True, root_certificates=server_pem) as c:
            with c.create_session() as session:
                assert session.append(TEXT).position == len(TEXT)
        with titans.Client(address, timeout=5, retry=titans.RetryPolicy(1)) as plain:
            with pytest.raises(titans.TitansError) as error:
                plain.get_model()
            assert error.value.code == grpc.StatusCode.UNAVAILABLE
    client_key_pem, client_pem, _, client_cert = self_signed(str(tmp_path), "client")
    with running_server(os.environ["TITANS_MODEL_DIR"],
                        [f"--tls_cert={server_cert}", f"--tls_key={server_key}",
                         f"--tls_client_ca={client_cert}"]) as address:
        with titans.Client(address, root_certificates=server_pem, private_key=client_key_pem,
                           certificate_chain=client_pem) as c:
            assert c.get_model().parameters > 0
        with titans.Client(address, tls=True, root_certificates=server_pem,
                           timeout=5, retry=titans.RetryPolicy(1)) as anonymous:
            with pytest.raises(titans.TitansError) as error:
                anonymous.get_model()
            assert error.value.code == grpc.StatusCode.UNAVAILABLE
