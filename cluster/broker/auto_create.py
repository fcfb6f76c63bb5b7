"""Topic auto-creation: Kafka's `auto.create.topics.enable`, off by default.

With `--auto-create-topics` a broker asked about a topic that does not exist (gRPC Metadata for a
named topic, Produce, or Kafka Metadata with allow_auto_topic_creation) creates it through the
metadata quorum with `--auto-create-partitions` partitions (default 1, Kafka's num.partitions) and
`--auto-create-replication-factor` replicas (default 0: the cluster default, min(3, live brokers)).
The request is answered at once, as Kafka does: LEADER_NOT_AVAILABLE (retriable) for a topic being
created, so the client asks again and finds it. Several brokers racing to create one name are
harmless: the quorum applies the first CreateTopic, the others get TOPIC_ALREADY_EXISTS.

`auto_create_command` is the rule (pure): never an internal topic (`__` prefix) nor an invalid
name, never when off. `AutoCreator` is the shell: at most MAX_AUTO_CREATES_IN_FLIGHT creations
in flight per broker, one per name.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from semel import internal_topics, limits
from semel.cluster.metadata import state as md
from semel.cluster.metadata.quorum import MetadataQuorum, MetadataSubmitError
from semel.v1 import common_pb2 as pb

if TYPE_CHECKING:
    from semel.cluster.broker.security import BrokerSecurity


class AutoCreateHost(Protocol):
    """What auto-creation uses of the broker: the quorum to create through, and who may create."""

    @property
    def quorum(self) -> MetadataQuorum: ...

    @property
    def security(self) -> BrokerSecurity | None: ...

log = logging.getLogger("semel.broker")


@dataclasses.dataclass(frozen=True, slots=True)
class AutoCreateSettings:
    enabled: bool = False
    partitions: int = 1
    replication_factor: int = 0  # 0: the cluster default, min(3, unfenced brokers)
    max_replicas_per_broker: int = 0  # the broker's partition-replica limit (replica_limit.py; 0: none)


def auto_create_command(name: str, image: md.MetadataImage, settings: AutoCreateSettings) -> md.CreateTopic | None:
    """The CreateTopic to submit for `name`, or None when it must not be auto-created."""
    if not settings.enabled or image.topic(name) is not None:
        return None
    if name in internal_topics.INTERNAL_TOPICS or name.startswith("__"):
        return None
    if md.validate_topic_name(name) != pb.NONE:
        return None
    rf = settings.replication_factor or min(3, max(1, len(image.placement_brokers())))
    return md.CreateTopic(name, settings.partitions, rf, max_replicas_per_broker=settings.max_replicas_per_broker)


class AutoCreator:
    """Starts the creations the rule allows, without waiting for them."""

    def __init__(self, broker: AutoCreateHost, settings: AutoCreateSettings) -> None:
        self.b = broker
        self.settings = settings
        self._creating: dict[str, asyncio.Task[None]] = {}

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    def request(self, names: Iterable[str], image: md.MetadataImage) -> set[str]:
        """The names among `names` being auto-created now (answer them LEADER_NOT_AVAILABLE)."""
        if not self.settings.enabled:
            return set()
        creating = set()
        security = self.b.security
        for name in names:
            command = auto_create_command(name, image, self.settings)
            if command is None or (security is not None and not security.may_create_topic(name)):
                continue
            creating.add(name)  # over the bound it is started by a later request, when one ends
            if name not in self._creating and len(self._creating) < limits.MAX_AUTO_CREATES_IN_FLIGHT:
                self._creating[name] = asyncio.get_running_loop().create_task(self._create(command))
        return creating

    async def _create(self, command: md.CreateTopic) -> None:
        try:
            result = await self.b.quorum.submit(command, timeout_s=limits.AUTO_CREATE_TIMEOUT_MS / 1000)
            if result.ok:
                log.info("auto-created topic %s (%d partition(s), replication factor %d)", command.name,
                         command.partitions, command.replication_factor)
            elif result.error != pb.TOPIC_ALREADY_EXISTS:
                log.warning("auto-creating topic %s failed: %s", command.name, pb.ErrorCode.Name(result.error))
        except MetadataSubmitError as exc:
            log.info("auto-creating topic %s failed: %s", command.name, exc)
        finally:
            self._creating.pop(command.name, None)
