"""Finding which worker writes a partition (the writers' group, on the embedded broker) and
forwarding a request to it (two local HTTP servers)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from aiokafka import AIOKafkaConsumer
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

import ledger_stream.kafka.group  # noqa: F401  (a stopped consumer leaves the group at once)
from agents.routing import (
    CLIENT_ID_PREFIX,
    FORWARDED_BY,
    ForwardFailed,
    Member,
    Owners,
    is_forwarded,
    owners_of,
    url_of,
)
from ledger_stream.kafka.broker import free_port
from ledger_stream.settings import Settings
from ledger_stream.topics import TopicNames

# As the workers of the integration tests run (ledger_stream.local.FAST_GROUP_ENV): the
# embedded broker admits a joining member only after the rebalance timeout.
REBALANCE_TIMEOUT_MS = 5000
SESSION_TIMEOUT_MS = 6000
HEARTBEAT_INTERVAL_MS = 1000
WAIT_S = 90.0  # a bound on waiting for the group, far past any rebalance seen here
POLL_S = 0.1
URL_A = "http://127.0.0.1:7001"
URL_B = "http://127.0.0.1:7002"


async def until(
    condition: Callable[[], Awaitable[bool]], what: str, wait_s: float = WAIT_S
) -> None:
    deadline = time.monotonic() + wait_s
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for {what} after {wait_s} s")
        await asyncio.sleep(POLL_S)


def writer_consumer(settings: Settings, owners: Owners) -> AIOKafkaConsumer:
    """A consumer of the writers' group, joined as a writer advertising `owners.own_url`."""
    return AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=settings.app_id,
        client_id=owners.client_id,
        enable_auto_commit=False,
        partition_assignment_strategy=(RangePartitionAssignor,),
        rebalance_timeout_ms=REBALANCE_TIMEOUT_MS,
        session_timeout_ms=SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
    )


def held(consumer: AIOKafkaConsumer) -> set[int]:
    return {tp.partition for tp in consumer.assignment()}


async def owner_urls(owners: Owners, partitions: int) -> list[str | None]:
    return [await owners.owner_url(p) for p in range(partitions)]


# -- who owns a partition, on the embedded broker -------------------------------------------


async def test_each_partition_maps_to_the_url_of_the_consumer_assigned_it(
    ledger: Settings,
) -> None:
    commands = TopicNames.from_settings(ledger).commands
    owners_a = Owners(ledger, URL_A, refresh_s=POLL_S)
    owners_b = Owners(ledger, URL_B, refresh_s=POLL_S)
    a = writer_consumer(ledger, owners_a)
    b = writer_consumer(ledger, owners_b)
    try:
        for consumer in (a, b):
            await consumer.start()
            consumer.subscribe([commands])

        async def split() -> bool:
            each = held(a), held(b)
            return all(each) and sum(map(len, each)) == len(set.union(*each)) == ledger.partitions

        await until(split, "both consumers to hold partitions, each its own")
        expected = [URL_A if p in held(a) else URL_B for p in range(ledger.partitions)]
        assert await owner_urls(owners_a, ledger.partitions) == expected
        assert await owner_urls(owners_b, ledger.partitions) == expected

        await a.stop()  # leaves the group: b is given every partition

        async def b_holds_all() -> bool:
            return len(held(b)) == ledger.partitions

        await until(b_holds_all, "the remaining consumer to hold every partition")
        owners_b.invalidate()

        async def all_on_b() -> bool:
            return await owner_urls(owners_b, ledger.partitions) == [URL_B] * ledger.partitions

        await until(all_on_b, "every partition to map to the remaining consumer")
    finally:
        for consumer in (a, b):
            await consumer.stop()
        for owners in (owners_a, owners_b):
            await owners.close()


async def test_no_owner_while_the_group_has_no_member(ledger: Settings) -> None:
    owners = Owners(ledger, URL_A)
    try:
        assert await owner_urls(owners, ledger.partitions) == [None] * ledger.partitions
    finally:
        await owners.close()


async def test_no_owner_and_no_exception_when_kafka_does_not_answer() -> None:
    unreachable = Settings(bootstrap_servers=f"127.0.0.1:{free_port()}", partitions=4)
    owners = Owners(unreachable, URL_A, request_timeout_s=1.0)
    try:
        assert await owners.owner_url(0) is None
    finally:
        await owners.close()


# -- reading the group's answer ----------------------------------------------------------

TOPIC = "t.commands"
MEMBER_A = CLIENT_ID_PREFIX + URL_A + "-0b5f3c56-2a5e-4f43-9d1e-6c1e2a9b8d70"
MEMBER_B = CLIENT_ID_PREFIX + URL_B + "-9f1e2d3c-4b5a-4678-9abc-def012345678"
MEMBER_TOOL = "aiokafka-0.14.0-11111111-2222-4333-8444-555555555555"


def assignment(partitions: list[int]) -> bytes:
    other = ConsumerProtocolMemberAssignment.Assignment("t.legs", partitions)
    ours = ConsumerProtocolMemberAssignment.Assignment(TOPIC, partitions)
    encoded: bytes = ConsumerProtocolMemberAssignment(0, [other, ours], b"").encode()
    return encoded


@pytest.mark.parametrize(
    ("members", "protocol", "expected"),
    [
        # Apache Kafka: client ids and assignments, as the leader sent them
        (
            [
                Member(MEMBER_A, CLIENT_ID_PREFIX + URL_A, assignment([1, 3])),
                Member(MEMBER_B, CLIENT_ID_PREFIX + URL_B, assignment([0, 2])),
            ],
            "range",
            {0: URL_B, 1: URL_A, 2: URL_B, 3: URL_A},
        ),
        # the embedded broker: member ids only; range over the sorted ids
        (
            [Member(MEMBER_B, "", b""), Member(MEMBER_A, "", b"")],
            "",
            {0: URL_A, 1: URL_A, 2: URL_B, 3: URL_B},
        ),
        # a member that is no writer holds partitions no one can be sent to
        (
            [Member(MEMBER_TOOL, "", b""), Member(MEMBER_B, "", b"")],
            "",
            {2: URL_B, 3: URL_B},
        ),
        # another assignor, and no assignment to read: unknown
        ([Member(MEMBER_A, "", b"")], "roundrobin", {}),
        ([], "", {}),
    ],
)
def test_owners_of_a_stable_group(
    members: list[Member], protocol: str, expected: dict[int, str]
) -> None:
    assert owners_of(members, protocol, TOPIC, 4) == expected


@pytest.mark.parametrize(
    ("member", "expected"),
    [
        (Member(MEMBER_A, "", b""), URL_A),
        (Member("other-id", CLIENT_ID_PREFIX + URL_B, b""), URL_B),
        (Member(MEMBER_TOOL, "", b""), None),
        (
            Member(CLIENT_ID_PREFIX + "not a url-0b5f3c56-2a5e-4f43-9d1e-6c1e2a9b8d70", "", b""),
            None,
        ),
        (Member(CLIENT_ID_PREFIX + "http://[::1]:7003", "", b""), "http://[::1]:7003"),
    ],
)
def test_url_of_a_member(member: Member, expected: str | None) -> None:
    assert url_of(member) == expected


class CountedOwners(Owners):
    """Owners whose group always has the same two writers; counts how often it is asked."""

    asked = 0

    async def _describe(self) -> tuple[str, str, list[Member]]:
        self.asked += 1
        return "Stable", "", [Member(MEMBER_A, "", b""), Member(MEMBER_B, "", b"")]


async def test_the_group_is_asked_at_most_every_refresh_s_and_again_past_the_age_bound() -> None:
    owners = CountedOwners(Settings(partitions=4), URL_A, refresh_s=60.0, age_max_s=120.0)
    assert await owner_urls(owners, 4) == [URL_A, URL_A, URL_B, URL_B]
    assert owners.asked == 1
    owners.invalidate()
    assert await owner_urls(owners, 4) == [None] * 4  # asked a moment ago: not again yet
    assert owners.asked == 1
    owners.refreshed_at = time.monotonic() - 61.0  # as if refresh_s had passed
    assert await owner_urls(owners, 4) == [URL_A, URL_A, URL_B, URL_B]
    assert owners.asked == 2
    owners.refreshed_at = time.monotonic() - 121.0  # as if the map were older than age_max_s
    assert await owners.owner_url(0) == URL_A
    assert owners.asked == 3
    await owners.close()


# -- forwarding ---------------------------------------------------------------------------


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """Serve `app` on a free local port; its base URL, until the block ends."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


class Owner:
    """The worker a request is forwarded to: keeps what it was asked, answers a conflict."""

    def __init__(self) -> None:
        self.seen: list[tuple[web.Request, bytes, bool]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((request, await request.read(), is_forwarded(request)))
        return web.Response(
            status=409,
            body=b'{"error": "idempotency_conflict"}',
            headers={"Content-Type": "application/problem+json; charset=utf-8"},
        )

    async def alias(self, request: web.Request) -> web.Response:
        self.seen.append((request, b"", is_forwarded(request)))
        if request.match_info["alias"] == "@known":
            return web.json_response({"account": "acct-1"})
        return web.json_response({"error": "alias_not_found"}, status=404)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/accounts/{account}/deposits", self.handle)
        app.router.add_get("/v1/aliases/{alias}", self.alias)
        return app


@asynccontextmanager
async def front_and_owner() -> AsyncIterator[tuple[str, str, Owner, Owners]]:
    """A worker that forwards everything to the owner: (front URL, owner URL, owner, the
    front's Owners)."""
    owner = Owner()
    holder: list[Owners] = []
    owner_url: list[str] = []

    async def forwarding(request: web.Request) -> web.Response:
        if is_forwarded(request):
            return web.Response(status=503, headers={"Retry-After": "1"})
        try:
            return await holder[0].forward(request, owner_url[0], timeout_s=10.0)
        except ForwardFailed:
            return web.Response(status=503, headers={"Retry-After": "1"})

    front = web.Application()
    front.router.add_route("*", "/{tail:.*}", forwarding)
    async with serving(owner.app()) as to_owner, serving(front) as to_front:
        owner_url.append(to_owner)
        holder.append(Owners(Settings(partitions=4), to_front))
        try:
            yield to_front, to_owner, owner, holder[0]
        finally:
            await holder[0].close()


async def test_a_forwarded_request_arrives_whole_and_its_answer_comes_back_unchanged() -> None:
    body = b'{"amount": "12.50", "currency": "EUR"}'
    async with front_and_owner() as (front, _, owner, _owners), aiohttp.ClientSession() as http:
        response = await http.post(
            f"{front}/v1/accounts/acct%2F7/deposits?wait=2&note=a%20b",
            data=body,
            headers={
                "Idempotency-Key": "key-1",
                "Content-Type": "application/json",
                "Accept": "application/json",
                "Authorization": "Bearer the-callers-key",
                "Cookie": "not=forwarded",
            },
        )
        answer = await response.read()

        assert len(owner.seen) == 1
        arrived, arrived_body, forwarded = owner.seen[0]
        assert arrived.method == "POST"
        assert arrived.raw_path == "/v1/accounts/acct%2F7/deposits?wait=2&note=a%20b"
        assert arrived.query["note"] == "a b"
        assert arrived_body == body
        assert arrived.headers["Idempotency-Key"] == "key-1"
        assert arrived.headers["Content-Type"] == "application/json"
        assert arrived.headers["Accept"] == "application/json"
        assert arrived.headers["Authorization"] == "Bearer the-callers-key"  # checked there too
        assert "Cookie" not in arrived.headers
        assert arrived.headers[FORWARDED_BY] == front
        assert forwarded
        assert response.status == 409
        assert answer == b'{"error": "idempotency_conflict"}'
        assert response.headers["Content-Type"] == "application/problem+json; charset=utf-8"


async def test_a_request_forwarded_once_is_not_forwarded_again() -> None:
    async with front_and_owner() as (front, _, owner, _owners), aiohttp.ClientSession() as http:
        response = await http.post(
            f"{front}/v1/accounts/acct-1/deposits", headers={FORWARDED_BY: "http://elsewhere:1"}
        )
        assert response.status == 503
        assert owner.seen == []


async def test_an_unreachable_owner_fails_the_forward_and_forgets_the_map() -> None:
    async with front_and_owner() as (_front, _, _owner, owners):
        owners.owners = {0: "http://127.0.0.1:1"}
        app = web.Application()
        request = _request(app, "GET", "/v1/accounts/acct-1")
        with pytest.raises(ForwardFailed):
            await owners.forward(request, f"http://127.0.0.1:{free_port()}", timeout_s=5.0)
        assert owners.owners == {}


async def test_get_json_reads_another_workers_answer() -> None:
    async with front_and_owner() as (_front, to_owner, _owner, owners):
        assert await owners.get_json(f"{to_owner}/v1/aliases/@known") == {"account": "acct-1"}
        assert await owners.get_json(f"{to_owner}/v1/aliases/@unknown") is None
        await owners.get_json(f"{to_owner}/v1/aliases/@known", {"X-API-Key": "the-callers-key"})
        asked, _, _ = _owner.seen[-1]
        assert asked.headers["X-API-Key"] == "the-callers-key"


def _request(app: web.Application, method: str, path: str) -> web.Request:
    return make_mocked_request(method, path, app=app)
