"""Which worker writes a partition, read from the writers' consumer group, and forwarding an
HTTP request for an account to that worker (as Faust web views route by key).

Each writer's consumer joins the group with its HTTP base URL in its client id
(`Owners.client_id`). DescribeGroups names every member; which partitions a member holds is
read from its assignment when the broker returns it (Apache Kafka does). The embedded broker
(Tansu 0.6) returns neither client ids nor assignments, only member ids, which it builds as
`<client id>-<uuid>` as Apache Kafka does; it keeps a group `Stable` only while the leader's
assignment covers exactly its members. So there the map is computed with the writers' own
assignor (range, over the sorted member ids and the commands topic's partitions): the same
function the group leader ran on the same input. Outside `Stable` no one owns anything: the
writers gave their partitions up when the rebalance began.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import aiohttp
from aiohttp import web
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)
from aiokafka.errors import KafkaError, for_code
from multidict import CIMultiDict
from yarl import URL

from ledger_stream.errors import ConfigurationError, LedgerError
from ledger_stream.kafka.security import connection_options
from ledger_stream.settings import Settings
from ledger_stream.topics import TopicNames

logger = logging.getLogger(__name__)

# A writer's consumer is `<prefix><base URL>`; members without it (another tool in the
# group) hold partitions no one can be forwarded to.
CLIENT_ID_PREFIX = "ledger-writer "
FORWARDED_BY = "Ledger-Forwarded-By"
# The caller's credentials go with a request forwarded (or asked) on its behalf: the owner
# checks them as the worker that took the request did.
CREDENTIAL_HEADERS = ("Authorization", "X-API-Key")
FORWARDED_HEADERS = ("Idempotency-Key", "Content-Type", "Accept", *CREDENTIAL_HEADERS)
RETURNED_HEADERS = ("Content-Type", "Retry-After", "Location")

REFRESH_S = 1.0  # the group is asked at most this often
AGE_MAX_S = 5.0  # a map older than this is asked again, even on a hit
REQUEST_TIMEOUT_S = 2.0  # connecting to Kafka and describing the group, together
GET_TIMEOUT_S = 5.0  # a worker asking another for a small JSON answer
FORWARD_CONNECTIONS_MAX = 100
FORWARD_BODY_BYTES_MAX = 8 * 1024 * 1024
_CHUNK_BYTES = 64 * 1024
# What Tansu and Apache Kafka append to the client id to make a member id.
_MEMBER_SUFFIX = re.compile(r"-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class ForwardFailed(LedgerError):
    """The owner of a partition could not be asked; answer 503 with Retry-After, the client
    may send the same request again (with the same Idempotency-Key)."""


@dataclass(frozen=True)
class _Answer:
    """Another worker's answer, read whole."""

    status: int
    reason: str | None
    headers: CIMultiDict[str]
    body: bytes


@dataclass(frozen=True)
class Member:
    """One member of the writers' group, as DescribeGroups returns it."""

    member_id: str
    client_id: str
    assignment: bytes


def is_forwarded(request: web.Request) -> bool:
    """Whether another worker forwarded this request here: it is not forwarded again."""
    return FORWARDED_BY in request.headers


class Owners:
    """Partition → base URL of the worker that writes it, from the writers' group, cached."""

    def __init__(
        self,
        settings: Settings,
        own_url: str,
        *,
        refresh_s: float = REFRESH_S,
        age_max_s: float = AGE_MAX_S,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
    ) -> None:
        if not _is_base_url(own_url):
            raise ConfigurationError(
                f"{own_url!r} is not a base URL other workers can reach (http://host:port)"
            )
        assert 0 < refresh_s <= age_max_s, (refresh_s, age_max_s)
        assert request_timeout_s > 0
        self.settings = settings
        self.own_url = own_url
        self.client_id = CLIENT_ID_PREFIX + own_url
        self.refresh_s = refresh_s
        self.age_max_s = age_max_s
        self.request_timeout_s = request_timeout_s
        self.topic = TopicNames.from_settings(settings).commands
        self.owners: dict[int, str] = {}
        self.refreshed_at: float | None = None  # monotonic seconds
        self.lock = asyncio.Lock()  # one refresh at a time; the others wait for it
        self.admin: AIOKafkaAdminClient | None = None
        self.session: aiohttp.ClientSession | None = None

    async def owner_url(self, partition: int) -> str | None:
        """The base URL of the worker writing `partition` (possibly this one); None while
        the group rebalances, when its owner advertises no URL, or when Kafka did not answer."""
        assert 0 <= partition < self.settings.partitions, partition
        if partition in self.owners and self._age_s() < self.age_max_s:
            return self.owners[partition]
        async with self.lock:
            if self._age_s() >= self.refresh_s:
                self.owners = await self._read_owners()
                self.refreshed_at = time.monotonic()
        return self.owners.get(partition)

    def invalidate(self) -> None:
        """Forget the map: the next question asks the group again (at most every refresh_s)."""
        self.owners = {}

    async def forward(self, request: web.Request, base_url: str, timeout_s: float) -> web.Response:
        """Ask the worker at `base_url` the same request; its status, body and content type.

        Raises ForwardFailed when the request was forwarded here already (loop guard), or
        the owner could not be reached or took longer than `timeout_s`; the cache is
        forgotten then, and when the owner says it does not own the partition (421, 503).
        """
        if is_forwarded(request):
            raise ForwardFailed(
                f"{request.path} was forwarded here by {request.headers[FORWARDED_BY]}; "
                "not forwarding it again (the group is rebalancing, or the map was stale)"
            )
        headers = {
            name: request.headers[name] for name in FORWARDED_HEADERS if name in request.headers
        }
        url = URL(base_url.rstrip("/") + request.raw_path, encoded=True)
        answer = await self._ask(request.method, url, headers, await request.read(), timeout_s)
        returned = {
            name: answer.headers[name] for name in RETURNED_HEADERS if name in answer.headers
        }
        return web.Response(
            status=answer.status, reason=answer.reason, body=answer.body, headers=returned
        )

    async def get_json(
        self,
        url: str,
        credentials: Mapping[str, str] | None = None,
        timeout_s: float = GET_TIMEOUT_S,
    ) -> dict[str, Any] | None:
        """GET `url` of another worker (marked forwarded, so it does not pass it on), with the
        caller's `credentials` (`CREDENTIAL_HEADERS`): its JSON object, None on 404. Raises
        ForwardFailed on any other answer, or none in time."""
        headers = {"Accept": "application/json", **(credentials or {})}
        answer = await self._ask("GET", URL(url), headers, b"", timeout_s)
        if answer.status == 404:
            return None
        if answer.status != 200:
            raise ForwardFailed(f"{url} answered {answer.status}: {answer.body[:200]!r}")
        try:
            body = json.loads(answer.body)
        except ValueError as error:
            raise ForwardFailed(f"{url} answered with something other than JSON") from error
        if not isinstance(body, dict):
            raise ForwardFailed(f"{url} answered with JSON that is not an object")
        return body

    async def close(self) -> None:
        if self.admin is not None:
            admin, self.admin = self.admin, None
            await admin.close()
        if self.session is not None:
            session, self.session = self.session, None
            await session.close()

    async def _ask(
        self, method: str, url: URL, headers: dict[str, str], body: bytes, timeout_s: float
    ) -> _Answer:
        """One request to another worker, marked as forwarded by this one; the cache is
        forgotten when the worker cannot be reached, or says it does not own the partition."""
        session = self._session()
        try:
            async with session.request(
                method,
                url,
                data=body,
                headers={**headers, FORWARDED_BY: self.own_url},
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as response:
                answer = _Answer(
                    response.status,
                    response.reason,
                    response.headers.copy(),
                    await _read_bounded(response),
                )
        except (aiohttp.ClientError, TimeoutError) as error:
            self.invalidate()
            logger.warning("could not ask %s %s (%r)", method, url, error)
            raise ForwardFailed(
                f"{url.origin()} could not be reached or did not answer within {timeout_s} s "
                f"({error!r})"
            ) from error
        if answer.status in (421, 503):
            self.invalidate()
        return answer

    # -- asking the group ---------------------------------------------------------------

    def _age_s(self) -> float:
        if self.refreshed_at is None:
            return float("inf")
        return time.monotonic() - self.refreshed_at

    async def _read_owners(self) -> dict[int, str]:
        """The map as the group stands; empty (logged in one line) when Kafka did not answer."""
        try:
            async with asyncio.timeout(self.request_timeout_s):
                state, protocol, members = await self._describe()
        except (KafkaError, OSError, TimeoutError) as error:
            logger.warning(
                "could not read the writers' group %s (%r); no partition has a known owner "
                "until the next try in %.1f s",
                self.settings.app_id,
                error,
                self.refresh_s,
            )
            await self._drop_admin()
            return {}
        if state != "Stable":
            return {}
        return owners_of(members, protocol, self.topic, self.settings.partitions)

    async def _describe(self) -> tuple[str, str, list[Member]]:
        if self.admin is None:
            admin = AIOKafkaAdminClient(
                bootstrap_servers=self.settings.bootstrap_servers,
                client_id="ledger-routing",
                request_timeout_ms=int(self.request_timeout_s * 1000),
                **connection_options(self.settings),
            )
            try:
                await admin.start()
            except BaseException:
                await admin.close()
                raise
            self.admin = admin
        responses = await self.admin.describe_consumer_groups([self.settings.app_id])
        return read_group(responses[0].groups[0])

    async def _drop_admin(self) -> None:
        """A failed admin is built again at the next try (the broker may have moved)."""
        if self.admin is not None:
            admin, self.admin = self.admin, None
            try:
                await admin.close()
            except Exception as error:
                logger.debug("closing the admin client failed: %r", error)

    def _session(self) -> aiohttp.ClientSession:
        if self.session is None:
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=FORWARD_CONNECTIONS_MAX)
            )
        return self.session


def read_group(group: Sequence[Any]) -> tuple[str, str, list[Member]]:
    """(state, protocol, members) of one group of a DescribeGroups response (v0-v3:
    error_code, group, state, protocol_type, protocol, members); a group error is raised."""
    error_code, name, state, _protocol_type, protocol, members = group[:6]
    if error_code:
        raise for_code(error_code)(f"describing group {name}")
    return state, protocol, [Member(m[0], m[1], m[4]) for m in members]


def owners_of(
    members: Sequence[Member], protocol: str, topic: str, partitions: int
) -> dict[int, str]:
    """Partition of `topic` → base URL of the writer holding it, in a stable group.

    The assignments the broker returned, when it returned any; otherwise the range
    assignor's, over the member ids (the embedded broker returns no assignment, and the
    writers assign by range). A partition held by a member with no URL is left out.
    """
    if any(member.assignment for member in members):
        held = {m.member_id: _partitions_of(m.assignment, topic) for m in members}
    elif protocol in ("", RangePartitionAssignor.name):
        held = ranges(sorted(m.member_id for m in members), topic, partitions)
    else:
        logger.warning("group assigns by %r and returned no assignment; no owners known", protocol)
        return {}
    urls = {m.member_id: url_of(m) for m in members}
    return {
        partition: url
        for member_id, numbers in held.items()
        if (url := urls[member_id]) is not None
        for partition in numbers
    }


def ranges(member_ids: Sequence[str], topic: str, partitions: int) -> dict[str, list[int]]:
    """What aiokafka's range assignor gives each member of `topic`, every member subscribed."""
    subscribed = ConsumerProtocolMemberMetadata(0, [topic], b"")
    assigned = RangePartitionAssignor.assign(
        cast(ClusterMetadata, _Partitions(topic, partitions)),
        dict.fromkeys(member_ids, subscribed),
    )
    return {
        member_id: [tp.partition for tp in assignment.partitions() if tp.topic == topic]
        for member_id, assignment in assigned.items()
    }


def url_of(member: Member) -> str | None:
    """The base URL a writer's member advertises: its client id, or (where the broker
    returns none) the member id the broker built from it."""
    client_id = member.client_id or _MEMBER_SUFFIX.sub("", member.member_id)
    if not client_id.startswith(CLIENT_ID_PREFIX):
        return None
    url = client_id.removeprefix(CLIENT_ID_PREFIX)
    return url if _is_base_url(url) else None


def _partitions_of(assignment: bytes, topic: str) -> list[int]:
    decoded = ConsumerProtocolMemberAssignment.decode(assignment)
    return [tp.partition for tp in decoded.partitions() if tp.topic == topic]


def _is_base_url(text: str) -> bool:
    try:
        url = URL(text)
    except ValueError:
        return False
    return (
        url.scheme in ("http", "https")
        and bool(url.host)
        and url.path in ("", "/")
        and not url.query_string
        and not any(c.isspace() for c in text)
    )


async def _read_bounded(response: aiohttp.ClientResponse) -> bytes:
    body = bytearray()
    async for chunk in response.content.iter_chunked(_CHUNK_BYTES):
        body += chunk
        if len(body) > FORWARD_BODY_BYTES_MAX:
            raise ForwardFailed(f"the owner's answer is over {FORWARD_BODY_BYTES_MAX} bytes")
    return bytes(body)


class _Partitions:
    """The one thing the range assignor asks of the cluster: a topic's partitions."""

    def __init__(self, topic: str, count: int) -> None:
        self.topic = topic
        self.count = count

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return set(range(self.count)) if topic == self.topic else None
