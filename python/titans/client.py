"""The blocking client: Client (a channel to one server) and Session (a handle on one session).

Thread safety: a Client and its Sessions may be used from many threads at once (gRPC channels
are thread-safe; the objects keep no per-call state). A Generation is iterated by one thread;
cancel() may be called from any.
"""
from __future__ import annotations

import os
import time
from typing import Iterator, Mapping, Optional, Sequence, Union

import grpc

from titans import _common as common
from titans._common import (AppendResult, GenerationResult, ModelInfo, Progress, RetryPolicy,
                            ScoreResult, SessionInfo, Snapshot, TextDelta, TitansError)
from titans.v1 import titans_pb2 as pb
from titans.v1 import titans_pb2_grpc as rpc


def channel_credentials(tls: bool, root_certificates: Optional[bytes],
                        private_key: Optional[bytes], certificate_chain: Optional[bytes]):
    if not tls and root_certificates is None and certificate_chain is None:
        return None
    return grpc.ssl_channel_credentials(root_certificates=root_certificates,
                                        private_key=private_key,
                                        certificate_chain=certificate_chain)


class Client:
    """A connection to one titans-server (or a router in front of several).

    address: "host:port". token: the bearer token when the server requires one
    (--auth_tokens_file); None reads TITANS_TOKEN from the environment if set. tls: use TLS with
    the system's roots, or `root_certificates` (PEM bytes); `private_key` and
    `certificate_chain` (PEM) for mutual TLS. timeout: the deadline of every unary call, in
    seconds; stream_timeout: that of appends and generations (a deadline is always set: a call
    never waits forever). retry: see RetryPolicy (idempotent calls only). Errors are raised as
    TitansError.
    """

    def __init__(self, address: str = "localhost:50051", token: Optional[str] = None, *,
                 tls: bool = False, root_certificates: Optional[bytes] = None,
                 private_key: Optional[bytes] = None,
                 certificate_chain: Optional[bytes] = None, timeout: float = 30.0,
                 stream_timeout: float = 3600.0, retry: RetryPolicy = RetryPolicy(),
                 options: Sequence = ()):
        self._token = token if token is not None else os.environ.get("TITANS_TOKEN")
        self.timeout, self.stream_timeout, self.retry = timeout, stream_timeout, retry
        options = [("grpc.max_receive_message_length", 64 << 20), *options]
        credentials = channel_credentials(tls, root_certificates, private_key, certificate_chain)
        self._channel = (grpc.secure_channel(address, credentials, options=options) if credentials
                         else grpc.insecure_channel(address, options=options))
        self._stub = rpc.TitansStub(self._channel)

    # Calls with retries ------------------------------------------------------------------------

    def _call(self, method: str, request, *, session_id: str = "", idempotent: bool,
              timeout: Optional[float] = None, gone_is_done: bool = False):
        policy = self.retry if idempotent else common.NO_RETRY
        backoffs = policy.backoffs()
        attempt = 0
        while True:
            attempt += 1
            try:
                return getattr(self._stub, method)(
                    request, timeout=timeout or self.timeout,
                    metadata=common.metadata(self._token, session_id))
            except grpc.RpcError as error:
                sleep = common.after_failure(error, method, attempt, policy, backoffs,
                                             gone_is_done)
                if sleep is None:
                    return None
                time.sleep(sleep)

    # Sessions ----------------------------------------------------------------------------------

    def create_session(self, session_id: str = "", *, model: str = "",
                       idle_ttl_seconds: int = 0,
                       labels: Optional[Mapping[str, str]] = None) -> "Session":
        """Opens a session. Without an id the client picks one in the server's format ("s-" and
        128 random bits, titans._common.new_session_id) so that the call carries the routing
        header; ALREADY_EXISTS if the id is taken."""
        request = common.create_request(session_id, model, idle_ttl_seconds, labels)
        info = self._call("CreateSession", request, session_id=request.session_id,
                          idempotent=False)
        return Session(self, SessionInfo.from_proto(info))

    def session(self, session_id: str) -> "Session":
        """A handle on an existing session, without a call (its `info` is fetched lazily)."""
        return Session(self, None, session_id)

    def get_session(self, session_id: str) -> SessionInfo:
        return SessionInfo.from_proto(self._call("GetSession", pb.GetSessionRequest(
            session_id=session_id), session_id=session_id, idempotent=True))

    def list_sessions(self, labels: Optional[Mapping[str, str]] = None,
                      page_size: int = 0) -> Iterator[SessionInfo]:
        """The caller's sessions, every page, optionally only those with all of `labels`."""
        token = ""
        while True:
            page = self._call("ListSessions", pb.ListSessionsRequest(
                page_size=page_size, page_token=token, label_filter=dict(labels or {})),
                idempotent=True)
            for s in page.sessions:
                yield SessionInfo.from_proto(s)
            token = page.next_page_token
            if not token:
                return

    def import_session(self, snapshot: Union[Snapshot, bytes, None] = None,
                       session_id: str = "", *, file_name: str = "", idle_ttl_seconds: int = 0,
                       labels: Optional[Mapping[str, str]] = None) -> "Session":
        """A session restored from an exported snapshot, or from `file_name` in the server's
        --snapshot_dir (FAILED_PRECONDITION if it comes from another model, DATA_LOSS if it is
        corrupted)."""
        info = self._call("ImportSession", common.import_request(
            snapshot, session_id, file_name, idle_ttl_seconds, labels),
            session_id=session_id, idempotent=False,
            timeout=self.stream_timeout)
        return Session(self, SessionInfo.from_proto(info))

    def score(self, tokens: Sequence[int]) -> ScoreResult:
        """log p of each token from an empty context (the first after <|bos|>); no session."""
        response = self._call("Score", common.score_request("", tokens, False),
                                  idempotent=True)
        return ScoreResult(tuple(response.logprobs), response.position)

    # Models ------------------------------------------------------------------------------------

    def list_models(self) -> list:
        return [ModelInfo.from_proto(m) for m in
                self._call("ListModels", pb.ListModelsRequest(), idempotent=True).models]

    def get_model(self, name: str = "") -> ModelInfo:
        return ModelInfo.from_proto(self._call("GetModel", pb.GetModelRequest(model=name),
                                               idempotent=True))

    def wait_until_ready(self, timeout: float = 30.0) -> None:
        """Blocks until the channel is connected (TitansError DEADLINE_EXCEEDED otherwise)."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise TitansError(grpc.StatusCode.DEADLINE_EXCEEDED,
                              f"server not reachable within {timeout} s") from None

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Generation:
    """A generation in progress: iterate it for TextDelta objects as tokens arrive; afterwards
    `finish_reason`, `timings`, `text` and `token_ids` describe the whole of it. cancel() stops it
    before the next token (the session keeps the prompt and the tokens generated so far);
    iteration then ends with finish_reason CANCELLED. As a context manager it cancels on exit
    unless finished; an abandoned one is cancelled when garbage-collected."""

    def __init__(self, call, method: str):
        self._call, self._method = call, method
        self._state = common.GenerationState()
        self._cancelled = False

    def __iter__(self) -> Iterator[TextDelta]:
        try:
            for message in self._call:
                yield self._state.add(message)
        except grpc.RpcError as error:
            if self._cancelled and error.code() == grpc.StatusCode.CANCELLED:
                self._state.finish_reason = common.FinishReason.CANCELLED
                return
            raise TitansError.from_rpc_error(error, self._method) from None

    def cancel(self) -> None:
        self._cancelled = True
        self._call.cancel()

    def __enter__(self) -> "Generation":
        return self

    def __exit__(self, *exc) -> None:
        """Leaving a `with` block cancels the generation if it has not finished (a loop that
        breaks early does not leave the server generating for nobody)."""
        if self._state.finish_reason is None:
            self.cancel()

    def result(self) -> GenerationResult:
        """Reads the rest of the generation and returns all of it."""
        for _ in self:
            pass
        return self._state.result()

    @property
    def text(self) -> str:
        return "".join(self._state.text_parts)

    @property
    def token_ids(self) -> tuple:
        return tuple(self._state.token_ids)

    @property
    def finish_reason(self):
        return self._state.finish_reason

    @property
    def timings(self):
        return self._state.timings


class SessionStream:
    """One bidirectional `Stream` call carrying a session's appends and generations in order,
    without a new call per command (lower latency for chat-like turns). Commands are sent one at
    a time; each method returns when the server has answered it. A failed command raises
    TitansError and the stream goes on; `close()` (or leaving the `with` block) ends the call.
    Not retried. Use from one thread."""

    _END = object()

    def __init__(self, session: "Session", timeout: Optional[float]):
        import queue
        c = session._client
        self._session = session
        self._requests: "queue.Queue" = queue.Queue()
        self._next_id = 0
        self._call = c._stub.Stream(iter(self._requests.get, self._END),
                                    timeout=timeout or c.stream_timeout,
                                    metadata=common.metadata(c._token, session.id))
        self._responses = iter(self._call)

    def _send(self, **command) -> int:
        self._next_id += 1
        self._requests.put(pb.StreamRequest(request_id=self._next_id, **command))
        return self._next_id

    def _answers(self, request_id: int):
        try:
            for response in self._responses:
                if response.request_id != request_id:
                    continue  # cannot happen with one command at a time; kept safe
                if response.HasField("error"):
                    raise common.stream_error(response)
                yield response
        except grpc.RpcError as error:
            raise TitansError.from_rpc_error(error, "Stream") from None

    def append(self, data: Union[str, bytes, Sequence[int]]) -> AppendResult:
        """Appends text or token ids (up to the server's message size; use Session.append for
        files and larger inputs)."""
        request = common.stream_append_request(self._session.id, data)
        for response in self._answers(self._send(append=request)):
            return AppendResult(response.append.tokens_consumed, response.append.position)
        raise TitansError(grpc.StatusCode.UNAVAILABLE, "stream ended before the answer", "Stream")

    def generate(self, prompt: Union[str, bytes, Sequence[int], None] = None, *,
                 max_tokens: int = 0, stop: Sequence[str] = (),
                 stop_at_eos: Optional[bool] = None, **sampling) -> Iterator[TextDelta]:
        """Yields the generation's text deltas; the last one ends it. Sampling keywords as for
        Session.generate. Read it to the end before the next command."""
        request = common.generate_request(self._session.id, prompt, max_tokens, stop, stop_at_eos,
                                          sampling)
        state = common.GenerationState()
        for response in self._answers(self._send(generate=request)):
            yield state.add(response.generate)
            if state.finish_reason is not None:
                self.last_generation = state.result()
                return

    def close(self) -> None:
        self._requests.put(self._END)
        for _ in self._responses:  # the server ends the call once its commands are answered
            pass

    def __enter__(self) -> "SessionStream":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
        else:
            self._call.cancel()


class Session:
    """One server-side session. A context manager: leaving the block closes the session."""

    def __init__(self, client: Client, info: Optional[SessionInfo], session_id: str = ""):
        self._client = client
        self._info = info
        self.id = info.session_id if info else session_id

    @property
    def info(self) -> SessionInfo:
        """The session's metadata as of the last call that returned it (fetched if never)."""
        if self._info is None:
            self._info = self._client.get_session(self.id)
        return self._info

    def refresh(self) -> SessionInfo:
        self._info = self._client.get_session(self.id)
        return self._info

    def append(self, data: common.Input, *, progress: Optional[Progress] = None,
               timeout: Optional[float] = None) -> AppendResult:
        """Feeds context into the session's memory: text (str, or UTF-8 bytes), token ids, or a
        file-like object (read in 1 MiB pieces). Large inputs and files go through AppendStream;
        either way the append is atomic (on error the session is unchanged). `progress` is
        called after each piece is handed to gRPC (see titans.Progress)."""
        stream, total, pieces = common.append_plan(self.id, data)
        c = self._client
        md = common.metadata(c._token, self.id)
        timeout = timeout or c.stream_timeout
        try:
            if not stream:
                request, sent = next(pieces)
                response = c._stub.Append(request, timeout=timeout, metadata=md)
                if progress:
                    progress(sent, total)
            else:
                def requests():
                    for request, sent in pieces:
                        yield request
                        if progress:
                            progress(sent, total)
                response = c._stub.AppendStream(requests(), timeout=timeout, metadata=md)
        except grpc.RpcError as error:
            raise TitansError.from_rpc_error(
                error, "AppendStream" if stream else "Append") from None
        return AppendResult(response.tokens_consumed, response.position)

    def generate(self, prompt: Union[str, bytes, Sequence[int], None] = None, *,
                 max_tokens: int = 0, stop: Sequence[str] = (),
                 stop_at_eos: Optional[bool] = None, temperature: Optional[float] = None,
                 top_k: Optional[int] = None, top_p: Optional[float] = None,
                 min_p: Optional[float] = None, repetition_penalty: Optional[float] = None,
                 seed: Optional[int] = None, timeout: Optional[float] = None) -> Generation:
        """Starts a generation (after appending `prompt`, if given) and returns it at once;
        iterate it for text deltas or call result(). max_tokens 0 means the server's default
        (256). Unset sampling fields use the session's, then the server's defaults."""
        request = common.generate_request(
            self.id, prompt, max_tokens, stop, stop_at_eos,
            dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                 repetition_penalty=repetition_penalty, seed=seed))
        c = self._client
        call = c._stub.Generate(request, timeout=timeout or c.stream_timeout,
                                metadata=common.metadata(c._token, self.id))
        return Generation(call, "Generate")

    def stream(self, *, timeout: Optional[float] = None) -> SessionStream:
        """One bidirectional call for many appends and generations (see SessionStream)."""
        return SessionStream(self, timeout)

    def score(self, tokens: Sequence[int], *, commit: bool = False) -> ScoreResult:
        """log p of each token after the session's context; with commit the tokens then join
        the session (not retried), without it the session is unchanged (retried)."""
        response = self._client._call("Score", common.score_request(self.id, tokens, commit),
                                          session_id=self.id, idempotent=not commit)
        return ScoreResult(tuple(response.logprobs), response.position)

    def fork(self, new_session_id: str = "", *, position: Optional[int] = None) -> "Session":
        """A new session that starts as an exact copy of this one (at `position`, if given:
        an earlier point it can rewind to)."""
        request = common.fork_request(self.id, new_session_id, position)
        info = self._client._call("ForkSession", request, session_id=self.id, idempotent=False)
        return Session(self._client, SessionInfo.from_proto(info))

    def rewind(self, position: int) -> SessionInfo:
        """Takes the session back to `position` (>= its rewind_floor); later tokens are
        forgotten for good."""
        self._info = SessionInfo.from_proto(self._client._call(
            "RewindSession", pb.RewindSessionRequest(session_id=self.id, position=position),
            session_id=self.id, idempotent=True))
        return self._info

    def export(self) -> Snapshot:
        """A snapshot of the session (Client.import_session restores it)."""
        response = self._client._call(
            "ExportSession", pb.ExportSessionRequest(session_id=self.id), session_id=self.id,
            idempotent=True, timeout=self._client.stream_timeout)
        return Snapshot(response.snapshot, response.model_fingerprint, response.position)

    def export_to_file(self, file_name: str) -> Snapshot:
        """Writes the snapshot to `file_name` in the server's --snapshot_dir instead of
        returning its bytes (Snapshot.data is then empty)."""
        response = self._client._call(
            "ExportSession", pb.ExportSessionRequest(session_id=self.id, file_name=file_name),
            session_id=self.id, idempotent=True, timeout=self._client.stream_timeout)
        return Snapshot(response.snapshot, response.model_fingerprint, response.position)

    def close(self) -> None:
        """Closes the session after its queued operations (later calls get NOT_FOUND)."""
        self._client._call("CloseSession", pb.CloseSessionRequest(session_id=self.id),
                           session_id=self.id, idempotent=True, gone_is_done=True)

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Session({self.id!r})"


__all__ = ["Client", "Session", "SessionStream", "Generation"]
