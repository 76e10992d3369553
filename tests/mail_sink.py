"""An SMTP server on localhost that keeps what the gateway mails (aiosmtpd), for the tests that follow a
mail's link or code as its recipient would; tests/conftest.py's `sink` and `mail_env` point a test
module's gateway at it."""

from __future__ import annotations

import email
import email.policy
import re
import threading
import time
from email.message import EmailMessage
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aiosmtpd.controller import Controller

from tests.server import free_port

LINK = re.compile(r"https?://\S+/verify\?\S+")
CODE = re.compile(r"\b(\d{6})\b")


class Sink:
    """An SMTP server on localhost that keeps every message it receives."""

    def __init__(self, port: int | None = None) -> None:
        self.messages: list[EmailMessage] = []
        self.arrived = threading.Condition()
        self.controller = Controller(self, hostname="127.0.0.1", port=port or free_port())

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.arrived:
            self.messages.append(message)  # type: ignore[arg-type]
            self.arrived.notify_all()
        return "250 OK"

    @property
    def port(self) -> int:
        return self.controller.port

    def start(self) -> Sink:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def to(self, address: str, count: int = 1, timeout: float = 20) -> EmailMessage:
        """The `count`th message to `address`, waiting for it."""
        deadline = time.monotonic() + timeout
        with self.arrived:
            while True:
                found = [m for m in self.messages if m["To"] == address]
                if len(found) >= count:
                    return found[count - 1]
                left = deadline - time.monotonic()
                assert left > 0, f"no mail #{count} to {address}; got {[m['To'] for m in self.messages]}"
                self.arrived.wait(left)

    def count(self, address: str) -> int:
        with self.arrived:
            return sum(1 for m in self.messages if m["To"] == address)


def body_of(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return part.get_content()


def link_in(message: EmailMessage) -> str:
    found = LINK.search(body_of(message))
    assert found, body_of(message)
    return found.group(0).rstrip(".)")


def code_in(message: EmailMessage) -> str:
    found = CODE.search(body_of(message).replace(link_in(message), ""))
    assert found, body_of(message)
    return found.group(1)


def fragment_of(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).fragment, keep_blank_values=True).items()}
