"""The encrypted message layer of one connection: sessions, salts, service messages."""

import asyncio
import logging
import time
from collections import deque
from typing import Any, Protocol

from telethon.errors import TypeNotFoundError
from telethon.tl import functions, types
from telethon.tl.core.gzippacked import GzipPacked
from telethon.tl.tlobject import TLRequest

from .core import Core
from .dispatch import Deferred, DropConnection, Reply, dispatch, error_payload
from .errors import METHOD_INVALID
from .keys import KeyRecord
from .mtproto import (
    GZIP_PACKED,
    MSG_CONTAINER,
    Envelope,
    MsgIdClock,
    ProtocolError,
    constructor_of,
    encrypt,
    gunzip_bounded,
    read_object,
    rpc_result,
    split_container,
)
from .rpc import Call

log = logging.getLogger(__name__)

MAX_SESSIONS = 16
RECENT_IDS = 512
TOO_OLD = 300
TOO_NEW = 30


class Sink(Protocol):
    """The connection underneath: where encrypted packets go."""

    no_updates: bool

    def send_packet(self, payload: bytes) -> None: ...

    def spawn(self, coro: Any) -> None: ...


class Session:
    """Server-side state of one client session id."""

    def __init__(self, session_id: int) -> None:
        self.id = session_id
        self._seq = 0
        self._recent: deque[int] = deque(maxlen=RECENT_IDS)
        self._recent_set: set[int] = set()

    def next_seq(self, content: bool) -> int:
        if content:
            self._seq += 1
            return self._seq * 2 - 1
        return self._seq * 2

    def seen(self, msg_id: int) -> bool:
        """Record msg_id; True if it was already processed."""
        if msg_id in self._recent_set:
            return True
        if len(self._recent) == self._recent.maxlen:
            self._recent_set.discard(self._recent[0])
        self._recent.append(msg_id)
        self._recent_set.add(msg_id)
        return False


class EncryptedLayer:
    """Decrypted envelopes in, encrypted answers out, for one auth key."""

    def __init__(self, core: Core, key: KeyRecord, sink: Sink, clock: MsgIdClock) -> None:
        self.core = core
        self.key = key
        self.sink = sink
        self.clock = clock
        self.sessions: dict[int, Session] = {}
        self.current: Session | None = None

    # -- sending ---------------------------------------------------------

    def send(self, session: Session, body: bytes, *, response: bool, content: bool) -> None:
        msg_id = self.clock.next(response=response)
        seq_no = session.next_seq(content)
        packet = encrypt(self.key.auth_key, self.key.salt, session.id, msg_id, seq_no, body)
        self.sink.send_packet(packet)

    def push(self, body: bytes) -> None:
        """Send a server-initiated update on the latest session."""
        if self.current is not None and not self.sink.no_updates:
            self.send(self.current, body, response=False, content=True)

    def _reply(self, session: Session, req_msg_id: int, reply: Reply) -> None:
        if reply.drop:
            raise DropConnection("drop_after")
        payload = GzipPacked.gzip_if_smaller(True, reply.payload)
        self.send(session, rpc_result(req_msg_id, payload), response=True, content=True)

    # -- receiving -------------------------------------------------------

    def _open_session(self, session: Session, first_msg_id: int) -> None:
        # Announced once the first message of the session is accepted.
        if len(self.sessions) >= MAX_SESSIONS:
            self.sessions.pop(next(iter(self.sessions)))
        self.sessions[session.id] = session
        created = types.NewSessionCreated(
            first_msg_id=first_msg_id, unique_id=session.id, server_salt=self.key.salt
        )
        self.send(session, bytes(created), response=False, content=False)

    def _bad_msg(self, session: Session, env: Envelope, code: int) -> None:
        notice = types.BadMsgNotification(
            bad_msg_id=env.msg_id, bad_msg_seqno=env.seq_no, error_code=code
        )
        self.send(session, bytes(notice), response=True, content=False)

    def _check_envelope(self, session: Session, env: Envelope) -> bool:
        """Telegram's msg_id and salt checks; False if the message is refused."""
        if env.msg_id % 4:
            self._bad_msg(session, env, 18)
            return False
        skew = (env.msg_id >> 32) - time.time()
        if skew < -TOO_OLD or skew > TOO_NEW:
            self._bad_msg(session, env, 16 if skew < 0 else 17)
            return False
        if env.salt != self.key.salt:
            notice = types.BadServerSalt(
                bad_msg_id=env.msg_id,
                bad_msg_seqno=env.seq_no,
                error_code=48,
                new_server_salt=self.key.salt,
            )
            self.send(session, bytes(notice), response=True, content=False)
            return False
        return True

    def receive(self, env: Envelope) -> None:
        """Handle one decrypted message (raises DropConnection for faults)."""
        session = self.sessions.get(env.session_id) or Session(env.session_id)
        if not self._check_envelope(session, env):
            return
        if session.id not in self.sessions:
            self._open_session(session, env.msg_id)
        self.current = session
        self._body(session, env.msg_id, env.seq_no, env.body, depth=0)

    def _body(self, session: Session, msg_id: int, seq_no: int, body: bytes, depth: int) -> None:
        if session.seen(msg_id) and depth == 0:
            return
        cid = constructor_of(body)
        if cid == MSG_CONTAINER and depth == 0:
            for inner_id, inner_seq, inner in split_container(body):
                if not session.seen(inner_id):
                    self._body(session, inner_id, inner_seq, inner, depth=1)
            return
        if cid == GZIP_PACKED and depth < 2:
            self._body(session, msg_id, seq_no, gunzip_bounded(body), depth=2)
            return
        try:
            obj = read_object(body)
        except TypeNotFoundError:
            if seq_no % 2:
                self._reply(session, msg_id, Reply(error_payload(400, METHOD_INVALID)))
            return
        except Exception as exc:
            raise ProtocolError(f"unreadable message body: {exc!r}") from exc
        self._object(session, msg_id, obj)

    def _object(self, session: Session, msg_id: int, obj: Any) -> None:
        if isinstance(obj, functions.PingRequest | functions.PingDelayDisconnectRequest):
            pong = types.Pong(msg_id=msg_id, ping_id=obj.ping_id)
            self.send(session, bytes(pong), response=True, content=False)
        elif isinstance(obj, functions.GetFutureSaltsRequest):
            self._future_salts(session, msg_id)
        elif isinstance(obj, functions.DestroySessionRequest):
            self.sessions.pop(obj.session_id, None)
            ok = types.DestroySessionOk(session_id=obj.session_id)
            self.send(session, bytes(ok), response=True, content=False)
        elif isinstance(obj, TLRequest):
            self._rpc(session, msg_id, obj)
        # msgs_ack, msgs_state_req, http_wait and the like need no answer here.

    def _future_salts(self, session: Session, msg_id: int) -> None:
        now = int(time.time())
        salt = types.FutureSalt(valid_since=now - 60, valid_until=now + 3600, salt=self.key.salt)
        body = bytes(types.FutureSalts(req_msg_id=msg_id, now=now, salts=[salt]))
        self.send(session, body, response=True, content=False)

    def _rpc(self, session: Session, msg_id: int, request: Any) -> None:
        outcome = dispatch(Call(self.core, self.key, self.sink), request)
        if isinstance(outcome, Reply) and not outcome.hold:
            self._reply(session, msg_id, outcome)
        else:
            self.sink.spawn(self._deferred(session, msg_id, outcome))

    async def _deferred(self, session: Session, msg_id: int, outcome: Reply | Deferred) -> None:
        if isinstance(outcome, Deferred):
            await asyncio.sleep(outcome.seconds)
            outcome = outcome.resume()
        if outcome.hold:
            await asyncio.sleep(outcome.hold)
        self._reply(session, msg_id, outcome)
