"""The ledger's consumer groups on aiokafka, with two fixes for the embedded broker.

- Tansu numbers group generations from 0 (Apache Kafka from 1), and aiokafka sends
  LeaveGroup only from generation 1 on, so a stopped worker's partitions waited out its
  session timeout before anyone else could take them. A consumer here leaves its group from
  generation 0 too.
- Tansu forgets to elect a new leader when the leader leaves while the group is forming
  (`Inner<Forming>::leave` in tansu-broker/src/coordinator/group/administrator.rs keeps
  `leader` set to the member it removed; only an expiry clears it). Every JoinGroup then
  names a leader that is gone and the group never gets its partitions again. So on the
  embedded broker (`leader_leaves` False, set by a worker that finds itself there) the
  group's leader does not send LeaveGroup: the coordinator expires it after the session
  timeout, which elects a new one.

Importing this module puts the fixes into every aiokafka consumer of the process.
"""

from __future__ import annotations

import logging
from typing import Any

import aiokafka.consumer.consumer as aiokafka_consumer
from aiokafka.consumer.group_coordinator import GroupCoordinator as AIOKafkaGroupCoordinator
from aiokafka.errors import KafkaError
from aiokafka.protocol.group import JoinGroupRequest, LeaveGroupRequest

logger = logging.getLogger(__name__)

# Whether a group's leader sends LeaveGroup when it stops; False on the embedded broker.
leader_leaves = True


class GroupCoordinator(AIOKafkaGroupCoordinator):
    """aiokafka's group coordinator, leaving the group from generation 0 too, and not at
    all as the group's leader while `leader_leaves` is False."""

    leader_id: str | None = None  # as the last JoinGroup answer named it

    async def _send_req(self, request: Any) -> Any:
        response = await super()._send_req(request)
        if isinstance(request, JoinGroupRequest):
            self.leader_id = response.leader_id or self.leader_id
        return response

    async def _maybe_leave_group(self) -> None:
        if not leader_leaves and self.member_id and self.leader_id == self.member_id:
            logger.info(
                "not leaving the group as its leader on the embedded broker: the other "
                "members get the partitions once this one's session times out"
            )
            self.reset_generation()
            return
        if self.generation == 0 and self._group_instance_id is None:
            try:
                await self._send_req(LeaveGroupRequest(self.group_id, self.member_id))
            except KafkaError as error:
                logger.warning("LeaveGroup request failed: %s", error)
            self.reset_generation()
            return
        await super()._maybe_leave_group()


# AIOKafkaConsumer builds its coordinator from this module-level name.
aiokafka_consumer.GroupCoordinator = GroupCoordinator
