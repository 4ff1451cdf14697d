"""The door to aiokafka's client internals that clients without Faust need too.

`streams.internals` is the door to every other internal of faust-streaming, aiokafka and
mode; these two are apart so that an offline command reading a topic (`replay --broker`,
`export-history` …) builds its clients without importing Faust (34 MB and 0.4 s at start).
The same rules hold: each names the upstream function it mirrors, and
`tests/unit/test_internals_contract.py` checks them against the installed aiokafka.

Checked against: aiokafka 0.14.0.
"""

from __future__ import annotations

import aiokafka.admin.client
import aiokafka.client
from aiokafka import AIOKafkaConsumer
from aiokafka.cluster import ClusterMetadata
from aiokafka.protocol.metadata import MetadataRequest

__all__ = ["MetadataRequestNoAutoCreate", "all_topics_metadata", "forbid_auto_creation"]


# Reads aiokafka's `AIOKafkaConsumer._client` (aiokafka 0.14.0), as the consumer's own
# `topics()` does, for `AIOKafkaClient.fetch_all_metadata` (public on the client).
async def all_topics_metadata(consumer: AIOKafkaConsumer) -> ClusterMetadata:
    """Metadata of every topic, without naming one (naming a missing one may create it)."""
    return await consumer._client.fetch_all_metadata()


# -- no topic auto-creation ------------------------------------------------------------------
# leadflow creates its topics itself, with their specs (`streams.kafka.topics.ensure_topics`), and
# refuses to start on a topic whose configs differ. A Metadata request naming a missing topic
# asks the broker to create it by default (`allow_auto_topic_creation=true`, Metadata v4+),
# and a broker that agrees creates it with its own defaults: Tansu always does, and so does
# Apache Kafka unless `auto.create.topics.enable=false` (true by default). After a broker lost
# its data this made the worker's own consumer recreate its events topic and changelog with
# no configs, a moment before the worker noticed the loss; restarted, it refused them (the
# broker-loss fault test on Tansu, in CI). aiokafka has no option for it: 0.14.0's
# `AIOKafkaClient._metadata_update` and `AIOKafkaAdminClient._get_cluster_metadata` build
# `MetadataRequest(topics)` (aiokafka.protocol.metadata), whose flag defaults to true. So the
# name those two modules use is swapped for a request whose default is false, as Kafka
# Streams sets `allow.auto.create.topics=false` on its consumers.
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
