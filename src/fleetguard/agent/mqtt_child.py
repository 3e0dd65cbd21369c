"""An MQTT session in a child process whose OpenSSL loads a provider (the TPM's ``tpm2``).

The TLS handshake must be signed where the client key is usable. For a key behind the TPM that is a
process started with the provider's ``OPENSSL_CONF`` (see :mod:`fleetguard.agent.transport_child`,
which does the same for EST). :class:`ChildSession` runs ``python -m fleetguard.agent.mqtt_child``;
the child opens a :class:`~fleetguard.agent.mqtt_session.PahoSession` and relays it. Everything else
(commands, renewal, telemetry) stays in the agent's process.

The two talk in JSON lines, bodies in base64. Parent to child, on stdin: the settings, then
``publish`` requests one at a time, then ``close`` (or end of file). Child to parent, on stdout:
``open`` or ``failed`` (with the error's kind), one ``published`` or ``unpublished`` per request,
and ``message`` and ``lost`` events as they come. Lines are bounded; a child that answers garbage,
too much, or nothing in time is ended and reported as :class:`~fleetguard.agent.errors.BrokerUnreachable`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from fleetguard.agent.errors import AgentConfigInvalid, AgentError, BrokerRefused, BrokerUnreachable
from fleetguard.agent.mqtt_session import (
    MAX_INCOMING_PACKET_BYTES,
    BrokerSettings,
    Lost,
    PahoSession,
    Received,
    SessionEvent,
    Will,
)
from fleetguard.agent.transport import TlsClientKey, TlsKeyKind

__all__ = ["CHILD_COMMAND", "ChildSession", "settings_from_json", "settings_to_json"]

CHILD_COMMAND = (sys.executable, "-m", "fleetguard.agent.mqtt_child")
"""How the child is started (the same interpreter, so the same fleetguard and paho-mqtt)."""

_MAX_LINE = 4 * MAX_INCOMING_PACKET_BYTES  # base64 (4/3) and JSON framing of the largest message
_MAX_QUEUED_EVENTS = 100  # as in PahoSession: a flood beyond this is dropped, with a log line
_STARTUP_ALLOWANCE_S = 15.0  # interpreter start and imports on a slow device
_EXIT_WAIT_S = 5.0
_log = logging.getLogger(__name__)

_Reply = Mapping[str, object]


class ChildSession:
    """A :class:`~fleetguard.agent.mqtt_session.BrokerSession` relayed by a child process."""

    def __init__(self, settings: BrokerSettings, process: subprocess.Popen[bytes]) -> None:
        self._settings = settings
        self._process = process
        self._events: queue.Queue[SessionEvent] = queue.Queue(maxsize=_MAX_QUEUED_EVENTS)
        self._replies: queue.Queue[_Reply] = queue.Queue()
        self._write_lock = threading.Lock()
        self._closed = False
        self._reader = threading.Thread(target=self._read, name="mqtt-child-reader", daemon=True)

    @classmethod
    def open(cls, settings: BrokerSettings, *, command: Sequence[str] = CHILD_COMMAND) -> ChildSession:
        """Start the child and wait for it to open the session; raise as ``PahoSession.open``."""
        environment = dict(os.environ)
        environment.update(settings.key.environment)
        if settings.key.openssl_conf is not None:
            environment["OPENSSL_CONF"] = str(settings.key.openssl_conf)
        try:
            process = subprocess.Popen(  # noqa: S603 - a fixed argv (tests name another), no shell
                list(command),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=environment,
            )
        except OSError as exc:
            raise BrokerUnreachable(f"cannot start the MQTT child process: {exc.strerror}") from exc
        session = cls(settings, process)
        session._reader.start()
        try:
            session._send({"settings": settings_to_json(settings)})
            session._opened()
        except BaseException:
            session.close()
            raise
        return session

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Have the child publish at QoS 1; return once it reports the PUBACK."""
        self._send({"op": "publish", "topic": topic, "payload": _b64(payload), "retain": retain})
        reply = self._reply(self._settings.timeout_s + _STARTUP_ALLOWANCE_S, f"publishing on {topic}")
        if reply.get("event") != "published":
            raise BrokerUnreachable(str(reply.get("message", "the MQTT child process failed"))[:300])

    def next_event(self, timeout_s: float) -> SessionEvent | None:
        """Return the next event the child relayed, or ``None`` after ``timeout_s``."""
        try:
            return self._events.get(timeout=max(timeout_s, 0.0))
        except queue.Empty:
            return None

    def close(self) -> None:
        """Ask the child to disconnect and exit; end it if it does not."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(BrokerUnreachable):  # the child is gone already
            self._send({"op": "close"})
        try:
            self._process.wait(timeout=self._settings.timeout_s + _EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._reader.join(timeout=_EXIT_WAIT_S)  # it ends at the end of the child's output
        for stream in (self._process.stdin, self._process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):  # unsent bytes to a child that is gone
                    stream.close()

    def _opened(self) -> None:
        reply = self._reply(self._settings.timeout_s * 3 + _STARTUP_ALLOWANCE_S, "opening the session")
        if reply.get("event") == "open":
            return
        message = str(reply.get("message", "the MQTT child process failed"))[:300]
        match reply.get("error"):
            case "refused":
                code = reply.get("reason_code")
                raise BrokerRefused(message, reason_code=code if isinstance(code, int) else 0x80)
            case "config":
                raise AgentConfigInvalid(message)
            case _:
                raise BrokerUnreachable(message)

    def _send(self, message: Mapping[str, object]) -> None:
        stdin = self._process.stdin
        assert stdin is not None
        with self._write_lock:
            try:
                stdin.write(json.dumps(message).encode() + b"\n")
                stdin.flush()
            except (OSError, ValueError) as exc:  # ValueError: the pipe is closed
                raise BrokerUnreachable("the MQTT child process is gone") from exc

    def _reply(self, timeout_s: float, doing: str) -> _Reply:
        try:
            return self._replies.get(timeout=timeout_s)
        except queue.Empty as exc:
            self._process.kill()
            raise BrokerUnreachable(f"the MQTT child process did not answer {doing} in time") from exc

    def _read(self) -> None:
        """Sort the child's lines into replies and events until it exits or misbehaves."""
        stdout = self._process.stdout
        assert stdout is not None
        reason = "the MQTT child process exited"
        while (line := stdout.readline(_MAX_LINE)).endswith(b"\n"):
            try:
                event = _event_from_json(json.loads(line))
            except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
                reason = f"the MQTT child process answered garbage: {str(exc)[:100]}"
                break
            if isinstance(event, Received | Lost):
                self._deliver(event)
            else:
                self._replies.put(event)
        else:
            if line:
                reason = "the MQTT child process answered a line too long"
        self._process.kill()  # a child that stops making sense is not left running
        self._replies.put({"event": "failed", "error": "unreachable", "message": reason})
        self._deliver(Lost(reason))

    def _deliver(self, event: SessionEvent) -> None:
        """Queue ``event``; drop a message when the queue is full, but make room for a loss."""
        while True:
            try:
                self._events.put_nowait(event)
            except queue.Full:
                if isinstance(event, Received):
                    _log.warning("dropped a message on %s: the agent is behind", event.topic)
                    return
                with contextlib.suppress(queue.Empty):
                    self._events.get_nowait()
            else:
                return


# -- the JSON of the exchange --------------------------------------------------------------------


def settings_to_json(settings: BrokerSettings) -> dict[str, object]:
    """Return ``settings`` as JSON members; the key is a file reference for the child's provider."""
    return {
        "host": settings.host,
        "port": settings.port,
        "client_id": settings.client_id,
        "trust_anchors": str(settings.trust_anchors),
        "certificate": str(settings.certificate),
        "key": settings.key.reference,
        "will_topic": settings.will.topic,
        "will_payload": _b64(settings.will.payload),
        "subscriptions": list(settings.subscriptions),
        "keepalive_s": settings.keepalive_s,
        "timeout_s": settings.timeout_s,
    }


def settings_from_json(data: Mapping[str, object]) -> BrokerSettings:
    """Return the settings :func:`settings_to_json` wrote; raise ``ValueError``/``KeyError``/``TypeError``."""
    subscriptions = data["subscriptions"]
    if not isinstance(subscriptions, list):
        raise TypeError("subscriptions is not a list")
    return BrokerSettings(
        host=_text(data["host"]),
        port=_integer(data["port"]),
        client_id=_text(data["client_id"]),
        trust_anchors=Path(_text(data["trust_anchors"])),
        certificate=Path(_text(data["certificate"])),
        key=TlsClientKey(TlsKeyKind.FILE, _text(data["key"])),
        will=Will(_text(data["will_topic"]), _unb64(data["will_payload"])),
        subscriptions=tuple(_text(topic) for topic in subscriptions),
        keepalive_s=_integer(data["keepalive_s"]),
        timeout_s=_number(data["timeout_s"]),
    )


def _event_from_json(data: Mapping[str, object]) -> SessionEvent | _Reply:
    match data["event"]:
        case "message":
            return Received(_text(data["topic"]), _unb64(data["payload"]), data["retained"] is True)
        case "lost":
            return Lost(_text(data["reason"]))
        case "open" | "failed" | "published" | "unpublished":
            return data
        case other:
            raise ValueError(f"unknown event {str(other)[:40]!r}")


def _event_to_json(event: SessionEvent) -> dict[str, object]:
    match event:
        case Received():
            return {"event": "message", "topic": event.topic, "payload": _b64(event.payload),
                    "retained": event.retained}  # fmt: skip
        case Lost():
            return {"event": "lost", "reason": event.reason}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(value: object) -> bytes:
    return base64.b64decode(_text(value), validate=True)


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, not {type(value).__name__}")
    return value


def _number(value: object) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"expected a number, not {type(value).__name__}")
    return float(value)


def _integer(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected an integer, not {type(value).__name__}")
    return value


# -- the child -------------------------------------------------------------------------------------


class _Writer:
    """JSON lines to stdout, one writer at a time (the relay thread and the request loop)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def __call__(self, message: Mapping[str, object]) -> None:
        with self._lock:
            self._stream.write(json.dumps(message).encode() + b"\n")
            self._stream.flush()


def _relay(session: PahoSession, write: _Writer, closing: threading.Event) -> None:
    while not closing.is_set():
        event = session.next_event(0.5)
        if event is not None:
            write(_event_to_json(event))
            if isinstance(event, Lost):
                return


def _serve(session: PahoSession, write: _Writer, stdin: IO[bytes]) -> None:
    while (line := stdin.readline(_MAX_LINE)).endswith(b"\n"):
        request = json.loads(line)
        if request.get("op") != "publish":
            return
        try:
            session.publish(
                _text(request["topic"]), _unb64(request["payload"]), retain=request["retain"] is True
            )
        except BrokerUnreachable as exc:
            write({"event": "unpublished", "message": str(exc)})
        else:
            write({"event": "published"})


def _child_main() -> int:
    """Open the session the first stdin line describes, relay it; exit 0, or 1 after ``failed``."""
    write = _Writer(sys.stdout.buffer)
    try:
        settings = settings_from_json(json.loads(sys.stdin.buffer.readline(_MAX_LINE))["settings"])
        session = PahoSession.open(settings)
    except BrokerRefused as exc:
        write({"event": "failed", "error": "refused", "message": str(exc), "reason_code": exc.reason_code})
        return 1
    except (AgentConfigInvalid, ValueError, KeyError, TypeError, binascii.Error) as exc:
        write({"event": "failed", "error": "config", "message": str(exc)})
        return 1
    except AgentError as exc:
        write({"event": "failed", "error": "unreachable", "message": str(exc)})
        return 1
    write({"event": "open"})
    closing = threading.Event()
    relay = threading.Thread(target=_relay, args=(session, write, closing), daemon=True)
    relay.start()
    try:
        _serve(session, write, sys.stdin.buffer)
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
        _log.exception("the agent sent the MQTT child process garbage")
    finally:
        closing.set()
        session.close()
        relay.join(timeout=_EXIT_WAIT_S)
    return 0


if __name__ == "__main__":
    sys.exit(_child_main())
