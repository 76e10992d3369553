"""The names of the NOTIFY channels (and special payloads) that processes use to tell each other what changed.

They are shared by the code that installs the triggers (`engine.storage.deploy`) and the code that
listens (`engine.runtime`'s registry, `engine.outbox`'s dispatcher), which must not import each other:
this module imports nothing, so anything can take its names without an import cycle.
"""

from __future__ import annotations

CHANGES_CHANNEL = "backsaas_tenants"  # NOTIFY'd with a tenant's slug whenever its row, versions, keys or members change
CHANGES_FEED = "backsaas_changes"  # NOTIFY'd with `schema.table` by every statement writing a tenant's table
SIGNING_KEYS_CHANGED = "#signing_keys"  # the payload when the token signing keys change (no slug holds '#')
PLANS_CHANGED = "#plans"  # the payload when a plan (and so some tenants' limits) changes
DOMAINS_CHANGED = "#domains"  # the payload when a tenant's custom domain is verified or removed
SESSIONS_CHANNEL = "backsaas_sessions"  # NOTIFY'd with a revoked session's id, or a tenant's id when all its sessions are
OUTBOX_CHANNEL = "backsaas_outbox"  # NOTIFY'd when events are written to the outbox (or redelivered)
