"""The JetStream requests a gateway makes per message, without nats-py's JetStream layer.

nats-py's ``js.publish`` and ``js.get_msg`` cost more CPU than the rest of a message's handling:
an ``asyncio.wait_for`` per call, a NUID per reply subject, stdlib ``json``, dataclass building,
and (``get_msg``) the stored headers parsed with the stdlib ``email`` parser. Here, per connection
and API prefix, one :class:`JetStreamOps` holds ONE wildcard reply subscription
(``<inbox prefix>.<random>.*``, under the connection's own inbox prefix, which is all a member
may subscribe to) and routes each reply by its last token to a future; one sweep task fails what
is overdue (so a timeout fires between ``timeout`` and ``timeout + tick`` after the request);
answers are decoded with msgspec.

Errors are nats-py's classes, so existing ``except`` clauses keep working: the JetStream error
JSON as ``APIError.from_error`` maps it (404 :class:`NotFoundError`, 503
:class:`ServiceUnavailableError`, ...), a wrong last sequence (10071/10164) as
:class:`KeyWrongLastSequenceError` (``err_code`` kept), no responders as :class:`NoResponders`
(at once ``nats.errors.NoRespondersError``, nats-py's ``NoStreamResponseError`` and a 503
``ServiceUnavailableError``), and no answer in time as ``nats.errors.TimeoutError``.

Direct gets keep :mod:`broker.natsraw`'s guarantee: a reply is a stored message when it carries
the headers the *server* adds to one (``Nats-Sequence`` and the rest), whatever ``Status`` header
its publisher stored with it; only a reply without them is the server speaking.

Reconnects: nats-py re-sends the subscription after a reconnect (it stays in the client's
subscription table), so the object keeps working. A request whose answer was lost with the
connection is failed by the sweep with a timeout (as nats-py's ``request`` would); a request made
while disconnected is buffered by nats-py (up to its pending size) and answered after the
reconnect, or times out. :meth:`JetStreamOps.close` fails what is pending with
``ConnectionClosedError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from datetime import datetime
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.errors import (
    APIError,
    BadRequestError,
    KeyWrongLastSequenceError,
    NoStreamResponseError,
    NotFoundError,
    ServerError,
    ServiceUnavailableError,
)

from psvn.backbone.connect import subscribe_handler

DEFAULT_API = "$JS.API"
NO_MESSAGE = 10037  # JetStream's "no message found"
WRONG_LAST_SEQUENCE = (10071, 10164)
SERVER_HEADERS = ("Nats-Stream", "Nats-Sequence", "Nats-Subject", "Nats-Time-Stamp")


class NoResponders(nats.errors.NoRespondersError, NoStreamResponseError, ServiceUnavailableError):
    """Nobody answered the request subject (a 503 status): no stream, or a leader election.

    One class for every ``except`` already written around nats-py: its ``request`` raises
    ``NoRespondersError``, its ``js.publish`` ``NoStreamResponseError``; a direct get's 503 was
    read as an ``APIError`` with code 503 (here a :class:`ServiceUnavailableError`)."""

    def __init__(self, description: str | None = None) -> None:
        APIError.__init__(self, code=503, description=description or "no responders")


# -- answers, as JetStream sends them ---------------------------------------------------------

class ApiErr(msgspec.Struct):
    code: int = 0
    err_code: int | None = None
    description: str | None = None


class Ack(msgspec.Struct):
    """JetStream's acknowledgement of a stored message."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False


class _PubResp(Ack):
    error: ApiErr | None = None


class _RawMsg(msgspec.Struct):
    subject: str
    seq: int
    time: datetime
    hdrs: bytes | None = None  # base64 in the JSON: msgspec decodes it
    data: bytes = b""


class _DeleteResp(msgspec.Struct):
    success: bool = False
    error: ApiErr | None = None


class _GetResp(msgspec.Struct):
    message: _RawMsg | None = None
    error: ApiErr | None = None


class Stored(msgspec.Struct):
    """A message as the stream stores it. ``headers``: the stored headers (a direct get's also
    carry the ``Nats-*`` headers the server adds)."""

    subject: str
    seq: int
    data: bytes
    headers: dict[str, str] | None
    time: datetime


_pub_decoder = msgspec.json.Decoder(_PubResp)
_get_decoder = msgspec.json.Decoder(_GetResp)
_delete_decoder = msgspec.json.Decoder(_DeleteResp)
_time_decoder = msgspec.json.Decoder(datetime)
_encode = msgspec.json.encode


def parse_headers(block: bytes) -> dict[str, str] | None:
    """A NATS header block (``NATS/1.0[ status[ description]]\\r\\nKey: value\\r\\n...\\r\\n\\r\\n``)
    as a dict: names and values stripped, a value may hold colons, the last of a repeated name
    wins; an inline status becomes ``Status`` (and ``Description``), as nats-py has it."""
    text = block.decode("utf-8", "replace")
    lines = text.split("\r\n")
    out: dict[str, str] = {}
    first = lines[0]
    if first.startswith("NATS/1.0 "):
        status, _, desc = first[9:].strip().partition(" ")
        if status.isdigit():
            out["Status"] = status
            if desc:
                out["Description"] = desc
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            name = name.strip()
            if name and " " not in name and "\t" not in name:
                out[name] = value.strip()
    return out or None


def _api_error(err: ApiErr) -> APIError:
    """What nats-py's ``APIError.from_error`` raises for this error, plus the wrong-last-sequence
    refusal as :class:`KeyWrongLastSequenceError` (a 400 ``BadRequestError`` too, ``err_code`` kept)."""
    kw: dict[str, Any] = {"code": err.code, "err_code": err.err_code, "description": err.description}
    if err.err_code in WRONG_LAST_SEQUENCE:
        exc: APIError = KeyWrongLastSequenceError(description=err.description)
        exc.code, exc.err_code = err.code, err.err_code
        return exc
    if err.code == 503:
        return ServiceUnavailableError(**kw)
    if err.code == 500:
        return ServerError(**kw)
    if err.code == 404:
        return NotFoundError(**kw)
    if err.code == 400:
        return BadRequestError(**kw)
    return APIError(**kw)


def _status_error(headers: dict[str, str]) -> Exception:
    """A reply with a status and no body: the server (or the client library) speaking."""
    status = headers.get("Status")
    if status == "503":
        return NoResponders(headers.get("Description"))
    if status == "408":
        return nats.errors.TimeoutError()
    code = int(status) if status and status.isdigit() else None
    if code == 404:
        return NotFoundError(code=404, description=headers.get("Description"))
    return APIError(code=code, description=headers.get("Description"))


class JetStreamOps:
    """Publish, stream message get and direct get on one connection, through one reply
    subscription. ``api_prefix``: ``$JS.API`` for the connection's own account, or where it
    imports another account's API (``broker.subjects.OPERATOR_JS_PREFIX``). Several objects may
    share a connection (each holds its own subscription)."""

    def __init__(self, nc: NATS, *, api_prefix: str = DEFAULT_API, timeout: float = 5.0, tick: float = 0.05) -> None:
        self._nc = nc
        self.api = api_prefix
        self.timeout = timeout
        self._tick = tick
        self._pending: dict[str, tuple[asyncio.Future[Msg], float]] = {}
        self._next = 0
        self._reply_prefix = ""
        self._cut = 0
        self._sub: Any = None
        self._sweep_timer: asyncio.TimerHandle | None = None  # set while requests wait
        self._starting: asyncio.Lock | None = None
        self._closed = False

    # -- the reply subscription and the deadlines ---------------------------------------------
    async def start(self) -> JetStreamOps:
        """Subscribe (done by the first request too); returns self."""
        if self._sub is not None:
            return self
        if self._closed:
            raise nats.errors.ConnectionClosedError
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._sub is None:
                prefix = bytes(self._nc._inbox_prefix).decode()
                reply_prefix = f"{prefix}.{secrets.token_hex(8)}."
                # on psvn's own client each reply goes straight to its future
                sub = await subscribe_handler(self._nc, reply_prefix + "*", self._resolve)
                if self._closed:  # closed while subscribing: nothing may wait on it
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()
                    raise nats.errors.ConnectionClosedError
                self._sub = sub
                self._reply_prefix, self._cut = reply_prefix, len(reply_prefix)
        return self

    async def close(self) -> None:
        """Unsubscribe; what is pending fails with ``ConnectionClosedError``."""
        self._closed = True
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
            self._sweep_timer = None
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        pending, self._pending = self._pending, {}
        for fut, _ in pending.values():
            if not fut.done():
                fut.set_exception(nats.errors.ConnectionClosedError())

    @property
    def pending(self) -> int:
        """Requests waiting for an answer."""
        return len(self._pending)

    def _resolve(self, msg: Msg) -> None:
        entry = self._pending.pop(msg.subject[self._cut:], None)
        if entry is not None and not entry[0].done():
            entry[0].set_result(msg)

    def _arm(self) -> None:
        """Look for overdue requests every ``tick`` seconds while any wait: a timer, not a task
        woken by the first request after a quiet spell (that task ran in the loop turn before
        the request's write, on every one-at-a-time message's backbone round trips)."""
        if self._sweep_timer is None and not self._closed:
            self._sweep_timer = asyncio.get_running_loop().call_later(self._tick, self._sweep)

    def _sweep(self) -> None:
        self._sweep_timer = None
        try:
            now = asyncio.get_running_loop().time()
            overdue = [token for token, (_, deadline) in self._pending.items() if deadline <= now]
            for token in overdue:
                entry = self._pending.pop(token, None)
                if entry is not None and not entry[0].done():
                    entry[0].set_exception(nats.errors.TimeoutError())
        finally:  # whatever happened, what still waits stays watched
            if self._pending:
                self._arm()

    async def _call(self, subject: str, payload: bytes, headers: dict[str, str] | None,
                    timeout: float | None) -> Msg:
        if self._sub is None:
            await self.start()
        if self._closed:  # (closed while another caller's start was subscribing)
            raise nats.errors.ConnectionClosedError
        self._next += 1
        token = str(self._next)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Msg] = loop.create_future()
        self._pending[token] = (fut, loop.time() + (self.timeout if timeout is None else timeout))
        self._arm()
        try:
            await self._nc.publish(subject, payload, reply=self._reply_prefix + token, headers=headers)
            return await fut
        except BaseException:
            self._pending.pop(token, None)
            raise

    async def request(self, subject: str, payload: bytes = b"", *, headers: dict[str, str] | None = None,
                      timeout: float | None = None) -> Msg:
        """The answer to one request (a 503 "no responders" status raises :class:`NoResponders`)."""
        msg = await self._call(subject, payload, headers, timeout)
        if not msg.data and msg.headers and "Status" in msg.headers:
            raise _status_error(msg.headers)
        return msg

    # -- the operations -----------------------------------------------------------------------
    async def publish(self, subject: str, data: bytes = b"", *, headers: dict[str, str] | None = None,
                      timeout: float | None = None) -> Ack:
        """Store a message; JetStream's acknowledgement. Headers as the stream reads them:
        ``Nats-Msg-Id``, ``Nats-Expected-Last-Subject-Sequence``, ``Nats-TTL``, ``KV-Operation``..."""
        msg = await self.request(subject, data, headers=headers, timeout=timeout)
        resp = _pub_decoder.decode(msg.data)
        if resp.error is not None:
            raise _api_error(resp.error)
        return resp

    async def msg_get(self, stream: str, *, subject: str | None = None, seq: int | None = None,
                      timeout: float | None = None) -> Stored | None:
        """The last message on ``subject`` (or the one at ``seq``), from the stream's leader
        (``STREAM.MSG.GET``: reads what was just written); None if there is none."""
        if (subject is None) == (seq is None):
            raise ValueError("msg_get: give subject or seq")
        body = _encode({"last_by_subj": subject} if subject is not None else {"seq": seq})
        msg = await self.request(f"{self.api}.STREAM.MSG.GET.{stream}", body, timeout=timeout)
        resp = _get_decoder.decode(msg.data)
        if resp.error is not None:
            if resp.error.err_code == NO_MESSAGE:
                return None
            raise _api_error(resp.error)
        m = resp.message
        if m is None:
            raise APIError(description="stream message get: no message in the answer")
        return Stored(subject=m.subject, seq=m.seq, data=m.data,
                      headers=parse_headers(m.hdrs) if m.hdrs else None, time=m.time)

    async def delete_msg(self, stream: str, seq: int, *, erase: bool = False, timeout: float | None = None) -> bool:
        """Remove the message at ``seq`` (``STREAM.MSG.DELETE``). A message gone already raises
        an :class:`APIError` with ``err_code`` 10057 (a 500) or 10043 (a 400), as from nats-py.

        ``erase`` overwrites its bytes on disk: nats-server then rewrites the whole message
        block holding it (``msgBlock.atomicOverwriteFile``), so its cost grows with the block.
        nats-py's ``delete_msg`` always asks for that. Measured (nats-server 2.15, a stream of
        4,000 messages of 1.2 KB): 2.0 ms of server CPU and 4.7 ms per erased delete, against
        0.09 ms and 0.17 ms removed; perf put a sender's receipt deletes at 11% of nats-server's
        CPU on the single-send path. The backbone only ever holds sealed bytes it cannot read,
        so the hot path removes without erasing; what a policy's retention deletes is erased."""
        body = _encode({"seq": seq} if erase else {"seq": seq, "no_erase": True})
        msg = await self.request(f"{self.api}.STREAM.MSG.DELETE.{stream}", body, timeout=timeout)
        resp = _delete_decoder.decode(msg.data)
        if resp.error is not None:
            raise _api_error(resp.error)
        return resp.success

    async def direct_get(self, stream: str, *, subject: str | None = None, seq: int | None = None,
                         timeout: float | None = None) -> Stored | None:
        """The last message on ``subject`` (the subject in the request subject, no body: the only
        form the consent bucket's export allows), or the one at ``seq``; from any replica. None if
        there is none. A stored message is known by the headers the server adds, never by a
        ``Status`` header its publisher stored with it."""
        if subject is not None and seq is None:
            req, body = f"{self.api}.DIRECT.GET.{stream}.{subject}", b""
        elif seq is not None and subject is None:
            req, body = f"{self.api}.DIRECT.GET.{stream}", _encode({"seq": seq})
        else:
            raise ValueError("direct_get: give subject or seq")
        msg = await self._direct(req, body, timeout)
        return None if msg is None else self._stored(msg)

    async def _direct(self, req: str, body: bytes, timeout: float | None) -> Msg | None:
        # not through request(): a stored message may be empty with a Status header of its own
        msg = await self._call(req, body, None, timeout)
        headers = msg.headers or {}
        if "Nats-Sequence" in headers and "Nats-Subject" in headers:
            return msg
        if headers.get("Status") == "404":
            return None
        raise _status_error(headers)

    @staticmethod
    def _stored(msg: Msg) -> Stored:
        h = msg.headers or {}
        stamp = h.get("Nats-Time-Stamp")
        time = _time_decoder.decode(b'"' + stamp.encode() + b'"') if stamp else datetime.min
        return Stored(subject=h["Nats-Subject"], seq=int(h["Nats-Sequence"]), data=msg.data or b"",
                      headers=dict(h), time=time)

    def kv(self, bucket: str) -> KV:
        """Writes and reads of one bucket through this object."""
        return KV(self, bucket)


def already_gone(exc: Exception) -> bool:
    """JetStream's 'no message found' (err 10037 / 10057) or, for a delete of a sequence the
    stream no longer holds, 'sequence not found' (err 10043, a 400): deleted already, by us, by
    another instance or by max age."""
    return isinstance(exc, NotFoundError) or getattr(exc, "err_code", None) in (10037, 10043, 10057)


class KV:
    """The key-value writes a gateway makes, as plain publishes (KV is a stream ``KV_<bucket>``,
    a key the subject ``$KV.<bucket>.<key>``); revisions are stream sequences."""

    def __init__(self, ops: JetStreamOps, bucket: str) -> None:
        self.ops, self.bucket = ops, bucket
        self.stream, self.prefix = f"KV_{bucket}", f"$KV.{bucket}."

    async def put(self, key: str, value: bytes, *, timeout: float | None = None) -> int:
        return (await self.ops.publish(self.prefix + key, value, timeout=timeout)).seq

    async def update(self, key: str, value: bytes, *, last: int, of: str | None = None,
                     msg_ttl: str | None = None, timeout: float | None = None) -> int:
        """Compare-and-set: :class:`KeyWrongLastSequenceError` unless ``last`` is the key's revision
        (with ``of``, a key filter such as ``*.<id>``: the last revision of any key it matches).
        ``msg_ttl``: the entry's own TTL (``Nats-TTL``: seconds, or ``never``, which outlives the
        bucket's)."""
        headers = {"Nats-Expected-Last-Subject-Sequence": str(last)}
        if of is not None:
            headers["Nats-Expected-Last-Subject-Sequence-Subject"] = self.prefix + of
        if msg_ttl is not None:
            headers["Nats-TTL"] = msg_ttl
        return (await self.ops.publish(self.prefix + key, value, timeout=timeout, headers=headers)).seq

    async def create(self, key: str, value: bytes, *, timeout: float | None = None) -> int:
        """Only if the key never held anything (a delete or purge marker counts, unlike nats-py's
        ``create``): :class:`KeyWrongLastSequenceError` otherwise."""
        return await self.update(key, value, last=0, timeout=timeout)

    async def delete(self, key: str, *, last: int | None = None, timeout: float | None = None) -> int:
        """A delete marker (``KV-Operation: DEL``): the key reads as holding nothing. With
        ``last``, only if that is still the key's revision (:class:`KeyWrongLastSequenceError`
        otherwise)."""
        headers = {"KV-Operation": "DEL"}
        if last is not None:
            headers["Nats-Expected-Last-Subject-Sequence"] = str(last)
        return (await self.ops.publish(self.prefix + key, b"", headers=headers, timeout=timeout)).seq

    async def purge(self, key: str, *, msg_ttl: float | None = None, timeout: float | None = None) -> int:
        """Drop every revision of the key for a purge marker (kept ``msg_ttl`` seconds if given)."""
        headers = {"KV-Operation": "PURGE", "Nats-Rollup": "sub"}
        if msg_ttl is not None:
            headers["Nats-TTL"] = str(int(msg_ttl))
        return (await self.ops.publish(self.prefix + key, b"", headers=headers, timeout=timeout)).seq

    async def get(self, key: str, *, timeout: float | None = None) -> Stored | None:
        """The key's last message from the stream's leader (a marker included: see its
        ``KV-Operation`` header); None if the key never held anything or was purged away."""
        return await self.ops.msg_get(self.stream, subject=self.prefix + key, timeout=timeout)
