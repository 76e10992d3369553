"""`/privacy/v1`: a tenant's GDPR desk, for its admins (the `admin` role, the service key, a platform admin).

- `GET /privacy/v1/requests?status=pending&user_id=...`: the tenant's requests, oldest first;
- `POST /privacy/v1/requests/{id}/complete` carries a request out (an erasure anonymises and disables the
  account); `POST /privacy/v1/requests/{id}/reject` `{reason}` closes it without;
- `GET /privacy/v1/users/{id}/export`: everything the tenant holds about one user;
- `GET /privacy/v1/users/{id}/consents`: one user's consents, current and history.

End users file and follow their own requests at `/auth/v1/privacy/...` (engine/identity/privacy.py).
"""

from __future__ import annotations

import uuid

import orjson
from starlette.requests import Request
from starlette.responses import Response

from engine import gdpr
from engine.authz import unrestricted
from engine.consents import consent_state
from engine.errors import Forbidden, InvalidBody, InvalidInput, Problem
from engine.runtime import TenantRuntime

PRIVACY_BASE = "/privacy/v1"
STATUSES = ("pending", "completed", "rejected")


def _json(payload: object, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


def _uuid(text: str, what: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise InvalidInput(f"not a {what} id", details=[Problem(what, f"'{text}' is not a UUID")]) from None


def _actor(request: Request) -> str:
    caller = request.scope["backsaas.caller"]
    if caller.user_id:
        return f"user:{caller.user_id}"
    return f"key:{caller.key_name}" if caller.key_name else ",".join(caller.roles)


async def privacy_endpoint(request: Request, runtime: TenantRuntime, rest: str) -> Response:
    caller = request.scope["backsaas.caller"]
    if not unrestricted(caller):
        raise Forbidden("the privacy desk is for the tenant's admins (admin or service)")
    db = request.app.state.db
    parts = rest.strip("/").split("/") if rest.strip("/") else []
    method = request.method
    if parts == ["requests"] and method == "GET":
        status = request.query_params.get("status")
        if status is not None and status not in STATUSES:
            raise InvalidInput(f"status must be one of {', '.join(STATUSES)}",
                               details=[Problem("status", f"'{status}' is not a status")])
        user = request.query_params.get("user_id")
        return _json(await gdpr.list_requests(db, runtime, status=status,
                                              user_id=_uuid(user, "user_id") if user else None))
    if len(parts) == 3 and parts[0] == "requests" and parts[2] in ("complete", "reject") and method == "POST":
        reason = None
        if parts[2] == "reject":
            body = await request.body()
            try:
                payload = orjson.loads(body) if body.strip() else {}
            except orjson.JSONDecodeError as exc:
                raise InvalidBody(f"the body is not valid JSON: {exc}") from exc
            reason = payload.get("reason") if isinstance(payload, dict) else None
            if not isinstance(reason, str) or not 0 < len(reason) <= 2000:
                raise InvalidInput("a rejection gives its reason", details=[Problem("reason", "is required text")])
        return _json(await gdpr.process_request(db, runtime, _uuid(parts[1], "request"), _actor(request), parts[2],
                                                reason))
    if len(parts) == 3 and parts[0] == "users" and method == "GET" and parts[2] in ("export", "consents"):
        user_id = _uuid(parts[1], "user")
        if parts[2] == "export":
            async with db.begin() as conn:
                return _json(await gdpr.export_user(conn, runtime, user_id, db=db))
        async with db.engine.connect() as conn:
            await gdpr.account_email(conn, runtime, user_id, db=db)
            return _json(await consent_state(conn, runtime.tenant_id, user_id))
    return _json({"code": "not_found", "message": f"no route {method} {PRIVACY_BASE}{rest}", "details": None,
                  "hint": None}, 404)
