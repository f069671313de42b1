"""What the blocking and the asyncio clients share: errors, retry policy, results, requests."""
from __future__ import annotations

import dataclasses
import enum
import random
import secrets
from typing import IO, Callable, Dict, Iterable, Iterator, Mapping, Optional, Sequence, Tuple, Union

import grpc

from titans.v1 import titans_pb2 as pb

SESSION_HEADER = "x-titans-session"
# Above this many bytes (or tokens), append() streams the input through AppendStream; a single
# Append message must stay under the server's --max_message_bytes (16 MiB by default).
STREAM_THRESHOLD = 1 << 20
CHUNK_BYTES = 1 << 20
CHUNK_TOKENS = 1 << 18

Progress = Callable[[int, Optional[int]], None]
"""Called as progress(sent, total) while an append is sent: bytes (text) or tokens sent so far,
and the total when it is known (None for a file-like object of unknown size)."""


class TitansError(Exception):
    """Every error the client raises. `code` is the grpc.StatusCode; `details` the server's
    message (the RPCs' status codes are described in proto/titans/v1/titans.proto)."""

    def __init__(self, code: grpc.StatusCode, details: str, method: str = ""):
        super().__init__(f"{method + ': ' if method else ''}{code.name}: {details}")
        self.code = code
        self.details = details
        self.method = method

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError, method: str = "") -> "TitansError":
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        details = error.details() if hasattr(error, "details") else str(error)
        return cls(code or grpc.StatusCode.UNKNOWN, details or "", method)


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Retries of idempotent calls only, with capped exponential backoff and full jitter.

    Retried (the same request twice has the effect of once): GetSession, ListSessions,
    GetModel, ListModels, ExportSession, RewindSession (to the same position), Score without
    commit, and CloseSession (a retry that finds the session gone reports success). Never
    retried, since a second attempt could apply twice: CreateSession, ImportSession, Append,
    AppendStream, Generate, ForkSession, Score with commit. Each attempt has the call's full
    deadline; `max_attempts` counts the first."""

    max_attempts: int = 4
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0
    retry_on: Tuple[grpc.StatusCode, ...] = (grpc.StatusCode.UNAVAILABLE,
                                             grpc.StatusCode.RESOURCE_EXHAUSTED)

    def backoffs(self) -> Iterator[float]:
        """The sleeps between attempts (max_attempts - 1 of them)."""
        ceiling = self.initial_backoff
        for _ in range(self.max_attempts - 1):
            yield random.uniform(0, min(ceiling, self.max_backoff))
            ceiling *= self.multiplier


NO_RETRY = RetryPolicy(max_attempts=1)


class FinishReason(str, enum.Enum):
    LENGTH = "length"
    STOP = "stop"
    END_OF_SEQUENCE = "end_of_sequence"
    CANCELLED = "cancelled"
    UNSPECIFIED = "unspecified"

    @classmethod
    def from_proto(cls, value: int) -> "FinishReason":
        return {
            pb.FINISH_REASON_LENGTH: cls.LENGTH,
            pb.FINISH_REASON_STOP: cls.STOP,
            pb.FINISH_REASON_END_OF_SEQUENCE: cls.END_OF_SEQUENCE,
            pb.FINISH_REASON_CANCELLED: cls.CANCELLED,
        }.get(value, cls.UNSPECIFIED)


@dataclasses.dataclass(frozen=True)
class SessionInfo:
    session_id: str
    model: str
    position: int
    state_bytes: int
    created_unix_ms: int
    last_used_unix_ms: int
    idle_ttl_seconds: int
    labels: Dict[str, str]
    spilled: bool
    queued_operations: int
    rewind_floor: int

    @classmethod
    def from_proto(cls, s: pb.Session) -> "SessionInfo":
        return cls(s.session_id, s.model, s.position, s.state_bytes, s.created_unix_ms,
                   s.last_used_unix_ms, s.idle_ttl_seconds, dict(s.labels), s.spilled,
                   s.queued_operations, s.rewind_floor)


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    name: str
    variant: str
    parameters: int
    vocab_size: int
    tokenizer: str
    initialization: str
    fingerprint: str
    description: str
    config_json: str
    server_version: str

    @classmethod
    def from_proto(cls, m: pb.ModelInfo) -> "ModelInfo":
        return cls(m.name, m.variant, m.parameters, m.vocab_size, m.tokenizer, m.initialization,
                   m.fingerprint, m.description, m.config_json, m.server_version)


@dataclasses.dataclass(frozen=True)
class AppendResult:
    tokens_consumed: int
    position: int


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """An exported session: versioned, checksummed bytes that ImportSession restores here or on
    another server running the same model (`model_fingerprint`)."""
    data: bytes
    model_fingerprint: str
    position: int


@dataclasses.dataclass(frozen=True)
class ScoreResult:
    logprobs: Tuple[float, ...]
    position: int


@dataclasses.dataclass(frozen=True)
class Timings:
    time_to_first_token_seconds: float
    total_seconds: float
    prompt_tokens: int
    generated_tokens: int


@dataclasses.dataclass(frozen=True)
class TextDelta:
    """One message of a generation: the text that became complete and the new token ids."""
    text: str
    token_ids: Tuple[int, ...]
    position: int


@dataclasses.dataclass(frozen=True)
class GenerationResult:
    text: str
    token_ids: Tuple[int, ...]
    finish_reason: FinishReason
    timings: Optional[Timings]
    position: int


class GenerationState:
    """Accumulates a generation's messages (shared by the blocking and asyncio iterators)."""

    def __init__(self):
        self.text_parts: list = []
        self.token_ids: list = []
        self.finish_reason: Optional[FinishReason] = None
        self.timings: Optional[Timings] = None
        self.position = 0

    def add(self, message: pb.GenerateResponse) -> TextDelta:
        self.text_parts.append(message.text)
        self.token_ids.extend(message.token_ids)
        self.position = message.position
        if message.finish_reason != pb.FINISH_REASON_UNSPECIFIED:
            self.finish_reason = FinishReason.from_proto(message.finish_reason)
        if message.HasField("timings"):
            t = message.timings
            self.timings = Timings(t.time_to_first_token_seconds, t.total_seconds,
                                   t.prompt_tokens, t.generated_tokens)
        return TextDelta(message.text, tuple(message.token_ids), message.position)

    def result(self) -> GenerationResult:
        return GenerationResult("".join(self.text_parts), tuple(self.token_ids),
                                self.finish_reason or FinishReason.UNSPECIFIED, self.timings,
                                self.position)


Input = Union[str, bytes, bytearray, memoryview, Sequence[int], IO]


def after_failure(error: grpc.RpcError, method: str, attempt: int, policy: RetryPolicy,
                  backoffs: Iterator[float], gone_is_done: bool) -> Optional[float]:
    """What a failed attempt of a unary call leads to, for the blocking and the asyncio client
    alike: seconds to wait before the next attempt, None when the call counts as done (a retried
    CloseSession that finds the session gone), or TitansError raised."""
    if gone_is_done and attempt > 1 and error.code() == grpc.StatusCode.NOT_FOUND:
        return None
    sleep = next(backoffs, None) if error.code() in policy.retry_on else None
    if sleep is None:
        raise TitansError.from_rpc_error(error, method) from None
    return sleep


def stream_error(response: pb.StreamResponse) -> TitansError:
    """The TitansError of a failed Stream command."""
    code = next((c for c in grpc.StatusCode if c.value[0] == response.error.code),
                grpc.StatusCode.UNKNOWN)
    return TitansError(code, response.error.message, "Stream")


def stream_append_request(session_id: str, data) -> pb.AppendRequest:
    """The one AppendRequest a Stream command carries (ValueError where the input would need
    AppendStream)."""
    stream, _, pieces = append_plan(session_id, data)
    if stream:
        raise ValueError("input too large for one Stream command: use the session's append")
    return next(pieces)[0]


def create_request(session_id: str, model: str, idle_ttl_seconds: int,
                   labels: Optional[Mapping[str, str]]) -> pb.CreateSessionRequest:
    return pb.CreateSessionRequest(session_id=session_id or new_session_id(), model=model,
                                   idle_ttl_seconds=idle_ttl_seconds, labels=dict(labels or {}))


def import_request(snapshot, session_id: str, file_name: str, idle_ttl_seconds: int,
                   labels: Optional[Mapping[str, str]]) -> pb.ImportSessionRequest:
    data = snapshot.data if isinstance(snapshot, Snapshot) else bytes(snapshot or b"")
    return pb.ImportSessionRequest(snapshot=data, session_id=session_id, file_name=file_name,
                                   idle_ttl_seconds=idle_ttl_seconds, labels=dict(labels or {}))


def fork_request(session_id: str, new_session_id: str,
                 position: Optional[int]) -> pb.ForkSessionRequest:
    request = pb.ForkSessionRequest(session_id=session_id, new_session_id=new_session_id)
    if position is not None:
        request.position = position
    return request


def score_request(session_id: str, tokens, commit: bool) -> pb.ScoreRequest:
    return pb.ScoreRequest(session_id=session_id, tokens=pb.TokenIds(ids=_token_list(tokens)),
                           commit=commit)


def new_session_id() -> str:
    """A session id chosen by the client, in the server's own format ("s-" and 128 random bits
    from the OS: as unguessable as one the server assigns). Choosing it here lets CreateSession
    carry the routing header, so a new session starts on the replica that will serve it."""
    return "s-" + secrets.token_hex(16)


def metadata(token: Optional[str], session_id: str = "") -> Tuple[Tuple[str, str], ...]:
    """The call's metadata: the bearer token and, for session calls, the routing header that
    keeps a session on one replica behind the chart's router (helm/README.md)."""
    md = []
    if token:
        md.append(("authorization", f"Bearer {token}"))
    if session_id:
        md.append((SESSION_HEADER, session_id))
    return tuple(md)


def sampling_params(temperature=None, top_k=None, top_p=None, min_p=None,
                    repetition_penalty=None, seed=None) -> pb.SamplingParams:
    params = pb.SamplingParams()
    for name, value in (("temperature", temperature), ("top_k", top_k), ("top_p", top_p),
                        ("min_p", min_p), ("repetition_penalty", repetition_penalty),
                        ("seed", seed)):
        if value is not None:
            setattr(params, name, value)
    return params


def generate_request(session_id: str, prompt, max_tokens: int, stop: Iterable[str],
                     stop_at_eos: Optional[bool], sampling: Mapping) -> pb.GenerateRequest:
    request = pb.GenerateRequest(session_id=session_id, max_tokens=max_tokens, stop=list(stop),
                                 sampling=sampling_params(**sampling))
    if stop_at_eos is not None:
        request.stop_at_eos = stop_at_eos
    if prompt is None:
        pass
    elif isinstance(prompt, str):
        request.prompt_text = prompt.encode("utf-8")
    elif isinstance(prompt, (bytes, bytearray, memoryview)):
        request.prompt_text = bytes(prompt)
    else:
        request.prompt_tokens.ids.extend(_token_list(prompt))
    return request


def _token_list(tokens) -> list:
    ids = list(tokens)
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
        raise TypeError("tokens must be integers")
    return ids


def is_file_like(data) -> bool:
    return hasattr(data, "read") and not isinstance(data, (str, bytes, bytearray, memoryview))


def append_plan(session_id: str, data) -> Tuple[bool, Optional[int], Iterator]:
    """How to send `data`: (stream?, total, iterator of (request, units sent so far)).

    str is UTF-8 encoded; bytes are sent as text (the server checks they are UTF-8); a sequence
    of ints as token ids; a file-like object is read in CHUNK_BYTES pieces (text mode files are
    encoded to UTF-8). Inputs over STREAM_THRESHOLD and files go through AppendStream: one atomic
    append however many messages. The server concatenates streamed text as bytes before
    tokenising, so a piece may end inside a UTF-8 character."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = bytes(data)
        total = len(data)

        def text_pieces():
            for start in range(0, max(total, 1), CHUNK_BYTES):
                piece = data[start:start + CHUNK_BYTES]
                yield pb.AppendRequest(session_id=session_id, text=piece), start + len(piece)
        return total > STREAM_THRESHOLD, total, text_pieces()
    if is_file_like(data):
        return True, _file_size(data), _file_pieces(session_id, data)
    ids = _token_list(data)
    total = len(ids)

    def token_pieces():
        for start in range(0, max(total, 1), CHUNK_TOKENS):
            piece = ids[start:start + CHUNK_TOKENS]
            yield (pb.AppendRequest(session_id=session_id, tokens=pb.TokenIds(ids=piece)),
                   start + len(piece))
    return total > STREAM_THRESHOLD, total, token_pieces()


def _file_size(stream) -> Optional[int]:
    try:
        position = stream.tell()
        end = stream.seek(0, 2)
        stream.seek(position)
        return end - position
    except (AttributeError, OSError, ValueError):
        return None


def _file_pieces(session_id: str, stream) -> Iterator:
    sent = 0
    while True:
        piece = stream.read(CHUNK_BYTES)
        if not piece:
            break
        if isinstance(piece, str):
            piece = piece.encode("utf-8")
        sent += len(piece)
        yield pb.AppendRequest(session_id=session_id, text=piece), sent
    if sent == 0:  # an empty file is an empty append, answered like any other
        yield pb.AppendRequest(session_id=session_id, text=b""), 0
