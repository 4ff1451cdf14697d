"""leadflow's Kafka clients never ask the broker to create a topic.

leadflow creates its topics itself, with their specs (partitions, cleanup policy, retention;
`streams.topics.ensure_topics`), and refuses to start on a topic whose configs differ. A
Metadata request naming a missing topic asks the broker to create it by default
(`allow_auto_topic_creation=true`, Metadata v4+), and a broker that agrees creates it with
its own defaults: Tansu always does, and so does Apache Kafka unless
`auto.create.topics.enable=false` (true by default). After a broker lost its data this
turned the worker's own consumer into the creator of an events topic and a changelog with no
configs, a moment before the worker noticed the loss; restarted, it then refused to start
for those configs (found by the broker-loss fault test on Tansu).

aiokafka has no public option for it (0.13, 0.14: `AIOKafkaClient._metadata_update` and the
admin client build `MetadataRequest(topics)`, whose flag defaults to true), so
`forbid_auto_creation` swaps the request class those modules use for one whose default is
false. Kafka Streams does the same (`allow.auto.create.topics=false` on its consumers).
"""

from __future__ import annotations

import aiokafka.admin.client
import aiokafka.client
from aiokafka.protocol.metadata import MetadataRequest


class MetadataRequestNoAutoCreate(MetadataRequest):
    """`MetadataRequest` that does not ask for missing topics to be created."""

    def __init__(
        self, topics: list[str] | None = None, allow_auto_topic_creation: bool | None = False
    ) -> None:
        super().__init__(topics, allow_auto_topic_creation)


def forbid_auto_creation() -> None:
    """Make every aiokafka client in this process send Metadata without auto-creation."""
    aiokafka.client.MetadataRequest = MetadataRequestNoAutoCreate  # type: ignore[misc]
    aiokafka.admin.client.MetadataRequest = MetadataRequestNoAutoCreate  # type: ignore[misc]
