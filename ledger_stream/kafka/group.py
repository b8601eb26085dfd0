"""The writers' consumer group on aiokafka, with one fix for the embedded broker.

Tansu numbers group generations from 0 (Apache Kafka from 1), and aiokafka sends LeaveGroup
only from generation 1 on, so a stopped worker's partitions waited out its session timeout
before anyone else could take them. Importing this module makes every aiokafka consumer of
the process leave its group from generation 0 too.
"""

from __future__ import annotations

import logging

import aiokafka.consumer.consumer as aiokafka_consumer
from aiokafka.consumer.group_coordinator import GroupCoordinator as AIOKafkaGroupCoordinator
from aiokafka.errors import KafkaError
from aiokafka.protocol.group import LeaveGroupRequest

logger = logging.getLogger(__name__)


class GroupCoordinator(AIOKafkaGroupCoordinator):
    """aiokafka's group coordinator, leaving the group from generation 0 too."""

    async def _maybe_leave_group(self) -> None:
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
