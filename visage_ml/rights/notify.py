"""Delivery of the notification outbox: SMTP and webhooks, retried, each outcome in the ledger.

:class:`Notifier` takes the due messages of :class:`~visage_ml.privacy.outbox.Outbox` and tries
each once: an e-mail through the SMTP server of ``privacy.notify`` (STARTTLS and login when
configured; the password from ``$VISAGE_SMTP_PASSWORD``), or an HTTP POST of the message as
JSON to a webhook, signed with HMAC-SHA256 under the project key ``secrets/notify.key``
(``X-Visage-Signature: sha256=<hex>``, so a receiver can check it came from this controller).
A message delivered is recorded as ``notification.sent`` with its SHA-256 and removed; a
failure is recorded as ``notification.failed`` and retried after ``backoff_seconds`` doubled
per attempt, up to ``max_attempts``. ``visage privacy notify`` runs one pass; ``visage privacy
enforce --apply`` runs one after its policies, and ``visage serve`` one every
``privacy.retention.serve_interval_seconds`` (hourly by default). One pass runs at a time (a
lock), so that two of them never send a message twice.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import smtplib
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

import orjson

from visage_ml.config import NotifyParams, ProjectPaths, load_params
from visage_ml.io import file_lock
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.keys import cache_mac_key
from visage_ml.privacy.outbox import SMTP, WEBHOOK, Message, Outbox
from visage_ml.privacy.requests import parse_time

log = logging.getLogger(__name__)

SMTP_PASSWORD_ENV = "VISAGE_SMTP_PASSWORD"  # noqa: S105 - the variable's name
NOTIFY_KEY = "notify.key"
SIGNATURE_HEADER = "X-Visage-Signature"
LOCK = Path(".visage") / "locks" / "notify.lock"


class DeliveryError(RuntimeError):
    """One delivery attempt failed; ``code`` is what the ledger records."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass
class DeliveryReport:
    """What one pass did: message ids delivered, failed (to be retried) and given up."""

    delivered: list[str] = field(default_factory=list)
    retrying: list[str] = field(default_factory=list)
    dead: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, list[str]]:
        return {"delivered": self.delivered, "retrying": self.retrying, "dead": self.dead}


def signature(key: bytes, body: bytes) -> str:
    """The ``X-Visage-Signature`` value of a webhook body."""
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


class Notifier:
    """Delivers the outbox of the project at ``paths``.

    Parameters
    ----------
    paths
        The project.
    core
        Its privacy core (opened when None).
    params
        ``privacy.notify`` (read from ``params.yaml`` when None).
    now
        Clock returning an aware UTC datetime (tests inject one).
    """

    def __init__(
        self,
        paths: ProjectPaths,
        *,
        core: PrivacyCore | None = None,
        params: NotifyParams | None = None,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self.paths = paths
        self.core = core if core is not None else PrivacyCore(paths)
        self.params = params if params is not None else load_params(paths.params).privacy.notify
        # By default the ledger's clock (what its entries are stamped with).
        self.now = now or (lambda: parse_time(self.core.ledger.clock()))
        self.outbox = Outbox(self.core)

    def _key(self) -> bytes:
        key = cache_mac_key(self.paths.secrets / NOTIFY_KEY, create=True)
        if key is None:  # pragma: no cover - create=True always returns a key or raises
            raise OSError("secrets/notify.key could not be created")
        return key

    # -- channels ------------------------------------------------------------------------------
    def send_smtp(self, msg: Message) -> None:
        p = self.params
        email = EmailMessage()
        email["From"] = p.smtp_from
        email["To"] = msg.address
        email["Subject"] = msg.subject
        email["Message-ID"] = make_msgid(idstring=msg.id)
        email["X-Visage-Message-Id"] = msg.id
        email.set_content(msg.body)
        try:
            with smtplib.SMTP(p.smtp_host, p.smtp_port, timeout=p.timeout_seconds) as smtp:
                if p.smtp_starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if p.smtp_user:
                    smtp.login(p.smtp_user, os.environ.get(SMTP_PASSWORD_ENV, ""))
                refused = smtp.send_message(email)
        except smtplib.SMTPRecipientsRefused:
            raise DeliveryError("smtp_recipient_refused") from None
        except smtplib.SMTPAuthenticationError:
            raise DeliveryError("smtp_auth_failed") from None
        except smtplib.SMTPException:
            raise DeliveryError("smtp_error") from None
        except TimeoutError:
            raise DeliveryError("smtp_timeout") from None
        except OSError:
            raise DeliveryError("smtp_unreachable") from None
        if refused:
            raise DeliveryError("smtp_recipient_refused")

    def send_webhook(self, msg: Message) -> None:
        body = orjson.dumps(msg.wire())
        request = urllib.request.Request(  # noqa: S310 - the URL is http(s) (channel_of)
            msg.address,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                SIGNATURE_HEADER: signature(self._key(), body),
                "X-Visage-Message-Id": msg.id,
            },
        )
        # No proxies from the environment: a webhook goes where the register says.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=self.params.timeout_seconds) as resp:
                status = resp.status
        except urllib.error.HTTPError as exc:
            raise DeliveryError(f"http_{exc.code}") from None
        except TimeoutError:
            raise DeliveryError("http_timeout") from None
        except (urllib.error.URLError, OSError):
            raise DeliveryError("http_unreachable") from None
        if not 200 <= status < 300:
            raise DeliveryError(f"http_{status}")

    # -- passes --------------------------------------------------------------------------------
    def deliver(self) -> DeliveryReport:
        """Try every due message once; record each outcome.

        Under the project's delivery lock: a server's pass and a `visage privacy notify` may
        run at once, and each would send every due message.
        """
        with file_lock(self.paths.root / LOCK):
            return self._deliver()

    def _deliver(self) -> DeliveryReport:
        report = DeliveryReport()
        now = self.now()
        senders = {SMTP: self.send_smtp, WEBHOOK: self.send_webhook}
        for msg in self.outbox.due(now):
            try:
                senders[msg.channel](msg)
            except DeliveryError as exc:
                m = self.outbox.failed(
                    msg,
                    error=exc.code,
                    now=now,
                    max_attempts=self.params.max_attempts,
                    backoff_seconds=self.params.backoff_seconds,
                )
                (report.dead if m.state == "dead" else report.retrying).append(msg.id)
                log.warning("notification %s not delivered (%s)", msg.id, exc.code)
                continue
            self.outbox.delivered(msg, attempts=msg.attempts + 1)
            report.delivered.append(msg.id)
        return report
