"""`/auth/v1/privacy/...`: a signed-in user's own GDPR requests and consents, in their tenant.

- `POST privacy/requests` `{type, reason?}` files a request (access, portability, erasure, restriction,
  lift_restriction, objection, withdraw_objection): 201 with its status and due date;
- `GET privacy/requests`: the user's requests; `GET privacy/requests/{id}/export`: the export a completed
  access or portability request gives;
- `POST privacy/consents` `{type, granted, policy_version, source?}` records a consent; `GET privacy/consents`:
  the current state of each type and the whole history.

Only the user's own, found by the access token's subject, with a live session: there is no parameter that
names another user. Another tenant's token never reaches here (the gateway refuses it first).
"""

from __future__ import annotations

import uuid
from typing import Any

from engine import gdpr
from engine.answer import Answer
from engine.consents import consent_state, record_consent
from engine.errors import AuthFailed
from engine.identity import sessions


async def handle(api: Any, method: str, path: str, body: bytes) -> Answer:
    """One privacy route of `api` (the tenant's `AuthApi`), `path` after `privacy/`."""
    from engine.identity.gotrue import _answer  # gotrue dispatches here: imported when a route runs

    caller = api.signed_in()
    async with api.db.begin() as conn:
        if not await sessions.is_live(conn, api.runtime.tenant_id, str(caller.session_id)):
            raise AuthFailed("session_not_found", 403, "Session from session_id claim in JWT does not exist")
    user_id = str(caller.user_id)
    parts = path.strip("/").split("/")
    if parts == ["requests"] and method == "POST":
        payload = api.json(body)
        return _answer(201, await gdpr.file_request(api.db, api.runtime, user_id, payload.get("type"),
                                                    payload.get("reason")))
    if parts == ["requests"] and method == "GET":
        return _answer(200, await gdpr.list_requests(api.db, api.runtime, user_id=user_id))
    if len(parts) == 3 and parts[0] == "requests" and parts[2] == "export" and method == "GET":
        return _answer(200, await gdpr.request_export(api.db, api.runtime, user_id, _uuid(parts[1])))
    if parts == ["consents"] and method == "POST":
        payload = api.json(body)
        async with api.db.begin() as conn:
            return _answer(201, await record_consent(conn, api.runtime.tenant_id, user_id, payload))
    if parts == ["consents"] and method == "GET":
        async with api.db.engine.connect() as conn:
            return _answer(200, await consent_state(conn, api.runtime.tenant_id, user_id))
    raise AuthFailed("not_found", 404, f"no auth route {method} /auth/v1/privacy/{path.strip('/')}")


def _uuid(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise gdpr.PrivacyRequestNotFound(f"'{text}' is not a request id") from None
