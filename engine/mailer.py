"""The platform's outgoing mail: SMTP from `BACKSAAS_SMTP_URL`, sent from a background queue, never inside a request.

Why a queue: a mail is decided by a transaction (a recovery token, an invitation) and must leave only once
that transaction has committed, and an SMTP server that is slow or down must stall neither the request
that asked for the mail nor any other tenant's. So `Mailer.send` only enqueues (callers call it after their
`db.begin()` block has committed) and returns at once; `workers` tasks of the process deliver, each
attempt bounded by `timeout`, a failed one retried `attempts` times with exponential backoff, and every
failure logged (`mail.retry`, then `mail.failed` with the mail's kind and its recipient's domain and hash,
never its subject, which a template may fill with a code). `aiosmtplib` speaks SMTP on
the event loop itself, so a hung server holds no thread of the pool that password hashing needs.

Why not the outbox (engine/outbox.py): its events are rows that a tenant's admins list (`/events/v1`), and a
mail's body carries a sign-in link: the plaintext token would sit in the database and in their view. The
queue lives in the process: a mail still queued when the process stops is logged (`mail.dropped`, without
its body) and its user asks again (`/auth/v1/resend`, `/recover`), as a lost mail always needs anyway.

`BACKSAAS_SMTP_URL`: `smtp://user:pass@host:port` (`?starttls=true` to upgrade with STARTTLS), or
`smtps://...` for TLS from the first byte; `BACKSAAS_MAIL_FROM` the sender. Without an SMTP URL the
transport is the server log: each mail is logged as `mail.not_sent` with its recipient, subject and body
(the development transport), never dropped in silence; `log_configuration` says so when a server starts.

The queue is fair between tenants (`FairQueue`): each tenant's mails wait in their own line, taken in
turn, with at most `workers - 1` of one tenant's being sent at once, so a tenant flooding the queue delays
its own mails, not the others'.

One `Mailer` per event loop (`current()`): the gateway's loop, or a test's or the CLI's, each with its own
workers; it reads the environment when the loop first sends.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import os
import random
import weakref
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formataddr, make_msgid
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import aiosmtplib
import structlog

from engine.errors import InvalidInput, Problem

SMTP_URL_VARIABLE = "BACKSAAS_SMTP_URL"
FROM_VARIABLE = "BACKSAAS_MAIL_FROM"
TIMEOUT_VARIABLE = "BACKSAAS_SMTP_TIMEOUT"  # seconds per attempt (connect, talk, send): default 10
ATTEMPTS_VARIABLE = "BACKSAAS_MAIL_ATTEMPTS"  # tries per mail: default 5
RETRY_VARIABLE = "BACKSAAS_MAIL_RETRY_SECONDS"  # the first retry's delay, doubled each time: default 5
PUBLIC_URL_VARIABLE = "BACKSAAS_PUBLIC_URL"  # the server's public origin, for the links in mails
DEFAULT_FROM = "BackSaas <no-reply@localhost>"
MAX_QUEUE = 10_000  # mails waiting in one process; beyond it a mail is refused and logged, not buffered forever


def _log() -> Any:
    """The mail logger, looked up per line (mail is rare): so a test's `structlog.testing.capture_logs` sees it
    although the server's configuration caches loggers on first use."""
    return structlog.get_logger("backsaas.mail")


class MailMisconfigured(InvalidInput):
    code = "mail_misconfigured"


@dataclass(frozen=True)
class Mail:
    """One message: `tenant` (a slug) only labels the log lines; `sender_name` is the tenant's branding name."""

    to: str
    subject: str
    body: str
    tenant: str | None = None
    kind: str | None = None
    sender_name: str | None = None
    html: str | None = None

    def labels(self) -> dict[str, str | None]:
        """What a log line says of this mail: its kind, tenant, and recipient's domain and SHA-256; never its
        subject or body, which a tenant's template may fill with a sign-in code or link (only the log
        transport, in development, writes the whole mail, by design)."""
        domain = self.to.rpartition("@")[2].lower()
        return {"kind": self.kind, "tenant": self.tenant, "to_domain": domain,
                "to_sha256": hashlib.sha256(self.to.strip().lower().encode()).hexdigest()}


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    username: str | None
    password: str | None
    implicit_tls: bool
    starttls: bool


@dataclass(frozen=True)
class MailSettings:
    smtp: SmtpSettings | None
    sender: str = DEFAULT_FROM
    timeout: float = 10.0
    attempts: int = 5
    retry_seconds: float = 5.0
    public_url: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> MailSettings:
        """The settings of `BACKSAAS_SMTP_URL` and the others, checked: a malformed URL is refused whole."""
        environ = os.environ if environ is None else environ
        url = environ.get(SMTP_URL_VARIABLE, "").strip()
        numbers: dict[str, float] = {}
        for key, name, default in (("timeout", TIMEOUT_VARIABLE, 10.0), ("attempts", ATTEMPTS_VARIABLE, 5),
                                   ("retry_seconds", RETRY_VARIABLE, 5.0)):
            text = environ.get(name, "").strip()
            try:
                numbers[key] = float(text) if text else float(default)
            except ValueError:
                raise MailMisconfigured(f"{name} must be a number, not {text!r}",
                                        details=[Problem(name, "is not a number")]) from None
            if numbers[key] <= 0:
                raise MailMisconfigured(f"{name} must be positive", details=[Problem(name, "must be positive")])
        public = environ.get(PUBLIC_URL_VARIABLE, "").strip().rstrip("/") or None
        if public is not None and urlsplit(public).scheme not in ("http", "https"):
            raise MailMisconfigured(f"{PUBLIC_URL_VARIABLE} must be an http(s) URL",
                                    details=[Problem(PUBLIC_URL_VARIABLE, "is not an http(s) URL")])
        if url and public is None:  # links would be built from the Host header, which the client chooses
            raise MailMisconfigured(f"{SMTP_URL_VARIABLE} is set without {PUBLIC_URL_VARIABLE}: set the server's public "
                                    "URL, from which the links in mails are built",
                                    details=[Problem(PUBLIC_URL_VARIABLE, f"is required with {SMTP_URL_VARIABLE}")])
        return cls(smtp_settings(url) if url else None, environ.get(FROM_VARIABLE, "").strip() or DEFAULT_FROM,
                   numbers["timeout"], int(numbers["attempts"]), numbers["retry_seconds"], public)


def smtp_settings(url: str) -> SmtpSettings:
    """`smtp://user:pass@host:port?starttls=true` or `smtps://...` as settings (user and password URL-quoted)."""
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        raise MailMisconfigured(f"{SMTP_URL_VARIABLE} must look like smtp://user:pass@host:port or smtps://...",
                                details=[Problem(SMTP_URL_VARIABLE, "is not an smtp:// or smtps:// URL with a host")])
    try:
        port = parts.port or (465 if parts.scheme == "smtps" else 25)
    except ValueError:
        raise MailMisconfigured(f"{SMTP_URL_VARIABLE} has an invalid port",
                                details=[Problem(SMTP_URL_VARIABLE, "has an invalid port")]) from None
    starttls = (parse_qs(parts.query).get("starttls") or ["false"])[0].lower() in ("1", "true", "yes")
    return SmtpSettings(parts.hostname, port, unquote(parts.username) if parts.username else None,
                        unquote(parts.password) if parts.password else None, parts.scheme == "smtps", starttls)


def message_of(mail: Mail, sender: str) -> EmailMessage:
    """The MIME message: the tenant's branding name as the sender's display name, the configured address."""
    message = EmailMessage()
    name, _, address = sender.rpartition("<")
    address = address.rstrip(">").strip() if name or "<" in sender else sender.strip()
    display = mail.sender_name or name.strip().strip('"') or None
    message["From"] = formataddr((display, address)) if display else address
    message["To"] = mail.to
    message["Subject"] = mail.subject
    message["Message-ID"] = make_msgid(domain=address.rpartition("@")[2] or None)
    message.set_content(mail.body)
    if mail.html is not None:
        message.add_alternative(mail.html, subtype="html")
    return message


class Transport(Protocol):
    async def deliver(self, mail: Mail) -> None: ...


class SmtpTransport:
    """One SMTP connection per mail, bounded by the timeout (a mail is rare next to a request)."""

    def __init__(self, settings: SmtpSettings, sender: str, timeout: float) -> None:
        self.settings, self.sender, self.timeout = settings, sender, timeout

    async def deliver(self, mail: Mail) -> None:
        s = self.settings
        async with asyncio.timeout(self.timeout):  # connect, greet, authenticate and send: the whole attempt
            await aiosmtplib.send(message_of(mail, self.sender), hostname=s.host, port=s.port, username=s.username,
                                  password=s.password, use_tls=s.implicit_tls, start_tls=s.starttls if not s.implicit_tls
                                  else False, timeout=self.timeout)


class LogTransport:
    """The development transport: the mail in the server log, whole, for the developer to follow its link."""

    async def deliver(self, mail: Mail) -> None:
        _log().warning("mail.not_sent", reason=f"{SMTP_URL_VARIABLE} is not set", to=mail.to, subject=mail.subject,
                    body=mail.body, tenant=mail.tenant, kind=mail.kind)


class FairQueue:
    """The mails waiting in one process, taken a tenant at a time: each tenant's mails wait in their own line,
    workers take from the lines in turn, and no tenant has more than `cap` mails being sent at once (fewer than
    the workers), so one tenant flooding the queue, or whose mails hang on a slow server, delays only its own.
    `maxsize` bounds all lines together. An item is (mail, attempt); `task_done(item)` ends its sending."""

    def __init__(self, maxsize: int, cap: int) -> None:
        self.maxsize, self.cap = maxsize, max(1, cap)
        self.lines: dict[str | None, deque[tuple[Mail, int]]] = {}  # in turn order: a served tenant goes last
        self.busy: dict[str | None, int] = {}
        self.size = 0
        self.unfinished = 0
        self.wake = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()

    def put_nowait(self, item: tuple[Mail, int]) -> None:
        if self.size >= self.maxsize:
            raise asyncio.QueueFull
        self.lines.setdefault(item[0].tenant, deque()).append(item)
        self.size += 1
        self.unfinished += 1
        self.idle.clear()
        self.wake.set()

    def take(self) -> tuple[Mail, int] | None:
        """The next mail of the first tenant in turn with fewer than `cap` being sent, else None."""
        for tenant in list(self.lines):
            if self.busy.get(tenant, 0) < self.cap:
                line = self.lines.pop(tenant)
                item = line.popleft()
                if line:
                    self.lines[tenant] = line  # back of the turn
                self.busy[tenant] = self.busy.get(tenant, 0) + 1
                self.size -= 1
                return item
        return None

    async def get(self) -> tuple[Mail, int]:
        while (item := self.take()) is None:
            self.wake.clear()
            await self.wake.wait()
        return item

    def task_done(self, item: tuple[Mail, int]) -> None:
        tenant = item[0].tenant
        self.busy[tenant] -= 1
        if not self.busy[tenant]:
            del self.busy[tenant]
        self.finished()
        self.wake.set()  # a tenant at its cap may be taken again

    def finished(self) -> None:
        self.unfinished -= 1
        if not self.unfinished:
            self.idle.set()

    def empty(self) -> bool:
        return not self.size

    def get_nowait(self) -> tuple[Mail, int]:
        """Any waiting mail, out of turn (for dropping them all at shutdown)."""
        tenant = next(iter(self.lines))
        item = self.lines[tenant].popleft()
        if not self.lines[tenant]:
            del self.lines[tenant]
        self.size -= 1
        self.finished()
        return item

    async def join(self) -> None:
        await self.idle.wait()


@dataclass
class Mailer:
    """The queue and its workers on one event loop; `transport` is SMTP or the log (from the settings)."""

    settings: MailSettings
    transport: Transport | None = None
    workers: int = 4
    queue: FairQueue = field(init=False)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    retries: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.queue = FairQueue(MAX_QUEUE, self.workers - 1)  # a tenant never holds every worker
        if self.transport is None:
            s = self.settings
            self.transport = SmtpTransport(s.smtp, s.sender, s.timeout) if s.smtp else LogTransport()

    def send(self, mail: Mail) -> None:
        """Queue `mail` and return at once (call it after the deciding transaction committed)."""
        self.enqueue(mail, 1)
        _log().info("mail.queued", **mail.labels())

    def enqueue(self, mail: Mail, attempt: int) -> None:
        try:
            self.queue.put_nowait((mail, attempt))
        except asyncio.QueueFull:
            _log().error("mail.failed", **mail.labels(),
                      error=f"the mail queue is full ({MAX_QUEUE} mails waiting)")
            return
        while len(self.tasks) < self.workers:
            # a fresh context: the worker outlives the request that started it, and must not log as that request
            # (its structlog context: request id, tenant, client) for every later tenant's mail
            task = asyncio.get_running_loop().create_task(self.work(), context=contextvars.Context())
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def work(self) -> None:
        try:
            while True:
                item = await self.queue.get()
                mail, attempt = item
                try:
                    await self.attempt(mail, attempt)
                except asyncio.CancelledError:
                    _log().warning("mail.dropped", **mail.labels(),
                                reason="the server stopped while sending it")
                    raise
                finally:
                    self.queue.task_done(item)
        except asyncio.CancelledError:
            self.drop_queued()
            raise

    async def attempt(self, mail: Mail, attempt: int) -> None:
        assert self.transport is not None
        try:
            await self.transport.deliver(mail)
        except Exception as exc:  # any failure of one attempt (refused, timed out, unreachable) is retried, then logged
            error = f"{type(exc).__name__}: {exc}"
            if attempt >= self.settings.attempts:
                _log().error("mail.failed", **mail.labels(),
                          attempts=attempt, error=error)
                return
            delay = self.settings.retry_seconds * 2 ** (attempt - 1) * random.uniform(0.8, 1.2)
            _log().warning("mail.retry", **mail.labels(), attempt=attempt,
                        retry_in=round(delay, 2), error=error)
            retry = asyncio.get_running_loop().create_task(self.retry(mail, attempt + 1, delay), context=contextvars.Context())
            self.retries.add(retry)
            retry.add_done_callback(self.retries.discard)
            return
        if isinstance(self.transport, SmtpTransport):
            _log().info("mail.sent", **mail.labels(), attempt=attempt)

    async def retry(self, mail: Mail, attempt: int, delay: float) -> None:
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            _log().warning("mail.dropped", **mail.labels(),
                        reason="the server stopped before its retry")
            raise
        self.enqueue(mail, attempt)

    def drop_queued(self) -> None:
        while not self.queue.empty():
            mail, _ = self.queue.get_nowait()
            _log().warning("mail.dropped", **mail.labels(),
                        reason="the server stopped before sending it")

    async def drain(self, timeout: float) -> bool:
        """Wait (at most `timeout` s) until every queued mail had its attempt: for a process about to exit
        (the CLI). True when nothing is left waiting."""
        try:
            async with asyncio.timeout(timeout):
                await self.queue.join()
        except TimeoutError:
            return False
        return True


_MAILERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Mailer] = weakref.WeakKeyDictionary()


def current() -> Mailer:
    """The running loop's mailer, made from the environment the first time this loop sends."""
    loop = asyncio.get_running_loop()
    mailer = _MAILERS.get(loop)
    if mailer is None:
        mailer = _MAILERS[loop] = Mailer(MailSettings.from_env())
    return mailer


def send(mail: Mail) -> None:
    """Queue `mail` on the running loop's mailer: after the deciding transaction's commit, never inside it."""
    current().send(mail)


def log_configuration(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Log how this server sends mail (for `serve` at start): `mail.not_configured` when mails only go to the
    log. Raises `MailMisconfigured` for a malformed setting, so a server does not start with it."""
    settings = MailSettings.from_env(environ)
    if settings.smtp is None:
        _log().warning("mail.not_configured", detail=f"{SMTP_URL_VARIABLE} is not set: mails are written to this log "
                    "(mail.not_sent) instead of being sent")
        return {"transport": "log"}
    s = settings.smtp
    _log().info("mail.configured", host=s.host, port=s.port, tls="implicit" if s.implicit_tls else
             "starttls" if s.starttls else "none", sender=settings.sender)
    return {"transport": "smtp", "host": s.host, "port": s.port}
