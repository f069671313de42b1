"""The asyncio client (grpc.aio): AsyncClient and AsyncSession, the same calls as titans.Client
and titans.Session, as coroutines. Generations are async iterators.

Use one AsyncClient per event loop; its calls may run concurrently as tasks on that loop.
"""
from __future__ import annotations

import asyncio
import os
from typing import AsyncIterator, Mapping, Optional, Sequence, Union

import grpc
import grpc.aio

from titans import _common as common
from titans._common import (AppendResult, GenerationResult, ModelInfo, Progress, RetryPolicy,
                            ScoreResult, SessionInfo, Snapshot, TextDelta, TitansError)
from titans.client import channel_credentials
from titans.v1 import titans_pb2 as pb
from titans.v1 import titans_pb2_grpc as rpc


class AsyncClient:
    """See titans.Client: the same arguments and retry rules."""

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
        self._channel = (grpc.aio.secure_channel(address, credentials, options=options)
                         if credentials else grpc.aio.insecure_channel(address, options=options))
        self._stub = rpc.TitansStub(self._channel)

    async def _call(self, method: str, request, *, session_id: str = "", idempotent: bool,
                    timeout: Optional[float] = None, gone_is_done: bool = False):
        policy = self.retry if idempotent else common.NO_RETRY
        backoffs = policy.backoffs()
        attempt = 0
        while True:
            attempt += 1
            try:
                return await getattr(self._stub, method)(
                    request, timeout=timeout or self.timeout,
                    metadata=common.metadata(self._token, session_id))
            except grpc.RpcError as error:
                sleep = common.after_failure(error, method, attempt, policy, backoffs,
                                             gone_is_done)
                if sleep is None:
                    return None
                await asyncio.sleep(sleep)

    async def create_session(self, session_id: str = "", *, model: str = "",
                             idle_ttl_seconds: int = 0,
                             labels: Optional[Mapping[str, str]] = None) -> "AsyncSession":
        request = common.create_request(session_id, model, idle_ttl_seconds, labels)
        info = await self._call("CreateSession", request, session_id=request.session_id,
                          idempotent=False)
        return AsyncSession(self, SessionInfo.from_proto(info))

    def session(self, session_id: str) -> "AsyncSession":
        return AsyncSession(self, None, session_id)

    async def get_session(self, session_id: str) -> SessionInfo:
        return SessionInfo.from_proto(await self._call("GetSession", pb.GetSessionRequest(
            session_id=session_id), session_id=session_id, idempotent=True))

    async def list_sessions(self, labels: Optional[Mapping[str, str]] = None,
                            page_size: int = 0) -> AsyncIterator[SessionInfo]:
        token = ""
        while True:
            page = await self._call("ListSessions", pb.ListSessionsRequest(
                page_size=page_size, page_token=token, label_filter=dict(labels or {})),
                idempotent=True)
            for s in page.sessions:
                yield SessionInfo.from_proto(s)
            token = page.next_page_token
            if not token:
                return

    async def import_session(self, snapshot: Union[Snapshot, bytes, None] = None,
                             session_id: str = "", *, file_name: str = "",
                             idle_ttl_seconds: int = 0,
                             labels: Optional[Mapping[str, str]] = None) -> "AsyncSession":
        info = await self._call("ImportSession", common.import_request(
            snapshot, session_id, file_name, idle_ttl_seconds, labels),
            session_id=session_id, idempotent=False, timeout=self.stream_timeout)
        return AsyncSession(self, SessionInfo.from_proto(info))

    async def score(self, tokens: Sequence[int]) -> ScoreResult:
        response = await self._call("Score", common.score_request("", tokens, False),
                                  idempotent=True)
        return ScoreResult(tuple(response.logprobs), response.position)

    async def list_models(self) -> list:
        response = await self._call("ListModels", pb.ListModelsRequest(), idempotent=True)
        return [ModelInfo.from_proto(m) for m in response.models]

    async def get_model(self, name: str = "") -> ModelInfo:
        return ModelInfo.from_proto(await self._call("GetModel", pb.GetModelRequest(model=name),
                                                     idempotent=True))

    async def wait_until_ready(self, timeout: float = 30.0) -> None:
        try:
            await asyncio.wait_for(self._channel.channel_ready(), timeout)
        except asyncio.TimeoutError:
            raise TitansError(grpc.StatusCode.DEADLINE_EXCEEDED,
                              f"server not reachable within {timeout} s") from None

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


class AsyncGeneration:
    """See titans.Generation: `async for delta in generation`, `await generation.result()`."""

    def __init__(self, call):
        self._call = call
        self._state = common.GenerationState()
        self._cancelled = False

    async def __aiter__(self) -> AsyncIterator[TextDelta]:
        try:
            async for message in self._call:
                yield self._state.add(message)
        except asyncio.CancelledError:
            if not self._cancelled:
                raise
            self._state.finish_reason = common.FinishReason.CANCELLED
        except grpc.RpcError as error:
            if self._cancelled and error.code() == grpc.StatusCode.CANCELLED:
                self._state.finish_reason = common.FinishReason.CANCELLED
                return
            raise TitansError.from_rpc_error(error, "Generate") from None
        if self._cancelled and self._state.finish_reason is None:
            self._state.finish_reason = common.FinishReason.CANCELLED

    def cancel(self) -> None:
        self._cancelled = True
        self._call.cancel()

    async def __aenter__(self) -> "AsyncGeneration":
        return self

    async def __aexit__(self, *exc) -> None:
        if self._state.finish_reason is None:
            self.cancel()

    async def result(self) -> GenerationResult:
        async for _ in self:
            pass
        return self._state.result()

    @property
    def text(self) -> str:
        return "".join(self._state.text_parts)

    @property
    def finish_reason(self):
        return self._state.finish_reason

    @property
    def timings(self):
        return self._state.timings


class AsyncSessionStream:
    """See titans.SessionStream: `async with session.stream() as s`, `await s.append(...)`,
    `async for delta in s.generate(...)`."""

    def __init__(self, session: "AsyncSession", timeout: Optional[float]):
        c = session._client
        self._session = session
        self._next_id = 0
        self._call = c._stub.Stream(timeout=timeout or c.stream_timeout,
                                    metadata=common.metadata(c._token, session.id))

    async def _send(self, **command) -> int:
        self._next_id += 1
        try:
            await self._call.write(pb.StreamRequest(request_id=self._next_id, **command))
        except grpc.RpcError as error:
            raise TitansError.from_rpc_error(error, "Stream") from None
        return self._next_id

    async def _answers(self, request_id: int):
        try:
            while True:
                response = await self._call.read()
                if response is grpc.aio.EOF:
                    return
                if response.request_id != request_id:
                    continue
                if response.HasField("error"):
                    raise common.stream_error(response)
                yield response
        except grpc.RpcError as error:
            raise TitansError.from_rpc_error(error, "Stream") from None

    async def append(self, data: Union[str, bytes, Sequence[int]]) -> AppendResult:
        request = common.stream_append_request(self._session.id, data)
        async for response in self._answers(await self._send(append=request)):
            return AppendResult(response.append.tokens_consumed, response.append.position)
        raise TitansError(grpc.StatusCode.UNAVAILABLE, "stream ended before the answer", "Stream")

    async def generate(self, prompt: Union[str, bytes, Sequence[int], None] = None, *,
                       max_tokens: int = 0, stop: Sequence[str] = (),
                       stop_at_eos: Optional[bool] = None, **sampling
                       ) -> AsyncIterator[TextDelta]:
        request = common.generate_request(self._session.id, prompt, max_tokens, stop, stop_at_eos,
                                          sampling)
        state = common.GenerationState()
        async for response in self._answers(await self._send(generate=request)):
            yield state.add(response.generate)
            if state.finish_reason is not None:
                self.last_generation = state.result()
                return

    async def close(self) -> None:
        await self._call.done_writing()
        while await self._call.read() is not grpc.aio.EOF:
            pass

    async def __aenter__(self) -> "AsyncSessionStream":
        return self

    async def __aexit__(self, *exc) -> None:
        if exc[0] is None:
            await self.close()
        else:
            self._call.cancel()


class AsyncSession:
    """See titans.Session. `async with` closes the session on exit."""

    def __init__(self, client: AsyncClient, info: Optional[SessionInfo], session_id: str = ""):
        self._client = client
        self._info = info
        self.id = info.session_id if info else session_id

    @property
    def info(self) -> Optional[SessionInfo]:
        """The metadata from the last call that returned it (None before any: see refresh)."""
        return self._info

    async def refresh(self) -> SessionInfo:
        self._info = await self._client.get_session(self.id)
        return self._info

    async def append(self, data: common.Input, *, progress: Optional[Progress] = None,
                     timeout: Optional[float] = None) -> AppendResult:
        stream, total, pieces = common.append_plan(self.id, data)
        c = self._client
        md = common.metadata(c._token, self.id)
        timeout = timeout or c.stream_timeout
        try:
            if not stream:
                request, sent = next(pieces)
                response = await c._stub.Append(request, timeout=timeout, metadata=md)
                if progress:
                    progress(sent, total)
            else:
                call = c._stub.AppendStream(timeout=timeout, metadata=md)
                for request, sent in pieces:
                    await call.write(request)
                    if progress:
                        progress(sent, total)
                await call.done_writing()
                response = await call
        except grpc.RpcError as error:
            raise TitansError.from_rpc_error(
                error, "AppendStream" if stream else "Append") from None
        return AppendResult(response.tokens_consumed, response.position)

    def generate(self, prompt: Union[str, bytes, Sequence[int], None] = None, *,
                 max_tokens: int = 0, stop: Sequence[str] = (),
                 stop_at_eos: Optional[bool] = None, temperature: Optional[float] = None,
                 top_k: Optional[int] = None, top_p: Optional[float] = None,
                 min_p: Optional[float] = None, repetition_penalty: Optional[float] = None,
                 seed: Optional[int] = None, timeout: Optional[float] = None) -> AsyncGeneration:
        request = common.generate_request(
            self.id, prompt, max_tokens, stop, stop_at_eos,
            dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                 repetition_penalty=repetition_penalty, seed=seed))
        c = self._client
        return AsyncGeneration(c._stub.Generate(request, timeout=timeout or c.stream_timeout,
                                                metadata=common.metadata(c._token, self.id)))

    def stream(self, *, timeout: Optional[float] = None) -> AsyncSessionStream:
        """One bidirectional call for many appends and generations (see AsyncSessionStream)."""
        return AsyncSessionStream(self, timeout)

    async def score(self, tokens: Sequence[int], *, commit: bool = False) -> ScoreResult:
        response = await self._client._call("Score", common.score_request(self.id, tokens, commit),
                                          session_id=self.id, idempotent=not commit)
        return ScoreResult(tuple(response.logprobs), response.position)

    async def fork(self, new_session_id: str = "", *,
                   position: Optional[int] = None) -> "AsyncSession":
        request = common.fork_request(self.id, new_session_id, position)
        info = await self._client._call("ForkSession", request, session_id=self.id,
                                        idempotent=False)
        return AsyncSession(self._client, SessionInfo.from_proto(info))

    async def rewind(self, position: int) -> SessionInfo:
        self._info = SessionInfo.from_proto(await self._client._call(
            "RewindSession", pb.RewindSessionRequest(session_id=self.id, position=position),
            session_id=self.id, idempotent=True))
        return self._info

    async def export(self) -> Snapshot:
        response = await self._client._call(
            "ExportSession", pb.ExportSessionRequest(session_id=self.id), session_id=self.id,
            idempotent=True, timeout=self._client.stream_timeout)
        return Snapshot(response.snapshot, response.model_fingerprint, response.position)

    async def export_to_file(self, file_name: str) -> Snapshot:
        """See titans.Session.export_to_file."""
        response = await self._client._call(
            "ExportSession", pb.ExportSessionRequest(session_id=self.id, file_name=file_name),
            session_id=self.id, idempotent=True, timeout=self._client.stream_timeout)
        return Snapshot(response.snapshot, response.model_fingerprint, response.position)

    async def close(self) -> None:
        await self._client._call("CloseSession", pb.CloseSessionRequest(session_id=self.id),
                                 session_id=self.id, idempotent=True, gone_is_done=True)

    async def __aenter__(self) -> "AsyncSession":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncSession({self.id!r})"


__all__ = ["AsyncClient", "AsyncSession", "AsyncSessionStream", "AsyncGeneration"]
