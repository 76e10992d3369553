"""Server-Sent Events of an entity's changes on its REST URL: filtered by the request's filters and the
caller's read permission, resumable with Last-Event-ID."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import orjson
import pytest

from engine.database import Database
from functions.keys import create_api_key
from functions.tenants import create_tenant
from tests.server import running_gateway

SCHEMA = """
name: feed
entities:
  post:
    realtime: true
    fields:
      title:  {type: text, required: true}
      status: {type: enum, values: [draft, published], default: draft, required: true}
    permissions:
      read: {anon: all, authenticated: all}
  note:
    owner: true
    realtime: true
    fields:
      text: {type: text, required: true}
    permissions:
      read: {authenticated: own}
      create: {authenticated: all}
  quiet:
    fields:
      x: {type: text}
    permissions:
      read: {anon: all}
"""


@pytest.fixture(scope="module")
async def keys(db: Database) -> dict[str, str]:
    made = {}
    for slug in ("feed", "elsewhere"):
        await create_tenant(db, slug, source=SCHEMA)
        made.update({f"{slug}_{role}": (await create_api_key(db, slug, role, role)).key for role in ("anon", "service")})
    return made


@pytest.fixture(scope="module")
def base(keys: dict[str, str], database_url: str) -> Iterator[str]:
    with running_gateway(database_url) as url:
        yield url


class Listener:
    """Reads an SSE stream in a thread until `expect` events came; `events` are (id, event, data)."""

    def __init__(self, url: str, headers: dict[str, str], expect: int = 0) -> None:
        self.events: list[tuple[int, str, dict]] = []
        self.status = 0
        self.expect = expect
        self.ready = threading.Event()
        self.client = httpx.Client(timeout=30)
        self.thread = threading.Thread(target=self.read, args=(url, headers), daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    def read(self, url: str, headers: dict[str, str]) -> None:
        try:
            with self.client.stream("GET", url, headers={"Accept": "text/event-stream", **headers}) as response:
                self.status = response.status_code
                self.ready.set()
                if response.status_code == 200:
                    self.parse(response)
        except httpx.HTTPError:
            return  # closed by `close()`

    def parse(self, response: httpx.Response) -> None:
        current: dict[str, str] = {}
        for line in response.iter_lines():
            if not line:
                if "data" in current:
                    self.events.append((int(current["id"]), current["event"], orjson.loads(current["data"])))
                    if len(self.events) >= self.expect:
                        return  # leaving the `with` closes the connection: the server ends the stream
                current = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                current[name] = value

    def wait(self, timeout: float = 10.0) -> list[tuple[int, str, dict]]:
        self.thread.join(timeout)
        self.client.close()
        return self.events


def test_changes_matching_the_filters_stream_as_they_commit_and_resume_from_the_last_id(base, keys):
    rest = f"{base}/api/tenants/feed/rest/v1/post"
    service = {"apikey": keys["feed_service"], "Prefer": "return=representation"}
    listener = Listener(f"{rest}?status=eq.published", {"apikey": keys["feed_anon"]}, expect=3)
    assert listener.status == 200
    httpx.post(rest, json={"title": "out", "status": "draft"}, headers=service)
    first = httpx.post(rest, json={"title": "one", "status": "published"}, headers=service).json()[0]
    httpx.patch(rest, params={"title": "eq.out"}, json={"status": "published"}, headers=service)
    httpx.delete(rest, params={"id": f"eq.{first['id']}"}, headers=service)
    events = listener.wait()
    assert [(e[1], (e[2]["record"] or e[2]["old_record"])["title"]) for e in events] == [
        ("create", "one"), ("update", "out"), ("delete", "one")]
    assert events[1][2]["old_record"]["status"] == "draft" and events[1][2]["type"] == "UPDATE"
    resumed = Listener(f"{rest}?status=eq.published", {"apikey": keys["feed_anon"], "Last-Event-ID": str(events[0][0])},
                       expect=2)
    assert [e[1] for e in resumed.wait()] == ["update", "delete"]


def test_a_stream_carries_only_rows_the_caller_may_read(base, keys):
    def sign_up(email: str) -> dict:
        return httpx.post(f"{base}/api/tenants/feed/auth/v1/signup", headers={"apikey": keys["feed_anon"]},
                          json={"email": email, "password": "a long passphrase"}).json()

    ann, bob = sign_up("ann@example.com"), sign_up("bob@example.com")
    rest = f"{base}/api/tenants/feed/rest/v1/note"
    listener = Listener(rest, {"apikey": keys["feed_anon"], "Authorization": f"Bearer {ann['access_token']}"},
                        expect=1)
    for who, text in ((bob, "bob's"), (ann, "ann's")):
        httpx.post(rest, json={"text": text}, headers={"apikey": keys["feed_anon"],
                                                       "Authorization": f"Bearer {who['access_token']}"})
    assert [e[2]["record"]["text"] for e in listener.wait()] == ["ann's"]  # bob's came first, and was not sent
    anonymous = Listener(rest, {"apikey": keys["feed_anon"]})
    assert anonymous.status == 403


def test_streams_need_a_realtime_entity_and_this_tenants_credentials(base, keys):
    quiet = Listener(f"{base}/api/tenants/feed/rest/v1/quiet", {"apikey": keys["feed_anon"]})
    assert quiet.status == 400
    stranger = Listener(f"{base}/api/tenants/feed/rest/v1/post", {"apikey": keys["elsewhere_service"]})
    assert stranger.status == 401
    bad_filter = Listener(f"{base}/api/tenants/feed/rest/v1/post?nope=eq.1", {"apikey": keys["feed_anon"]})
    assert bad_filter.status == 400


def test_a_filter_value_its_column_refuses_is_a_400_before_the_stream_starts(base, keys):
    for query in ("id=eq.not-a-uuid", "created_at=gt.someday", "title=gt.a&created_at=lt.2026-13-45"):
        refused = Listener(f"{base}/api/tenants/feed/rest/v1/post?{query}", {"apikey": keys["feed_anon"]})
        assert refused.status == 400, query
        refused.wait(1)
