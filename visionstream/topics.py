"""Create visionstream's topics explicitly, with the configured partitions.

Brokers that auto-create topics (Tansu, and Kafka with auto.create.topics.enable) would otherwise pick
their own partition count, and a table's changelog must match its source topic's partitions.
"""

from __future__ import annotations

import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from visionstream.core.kafka_client import check_kafka_connection, kafka_client_kwargs
from visionstream.settings import Settings

log = logging.getLogger(__name__)


async def ensure_topics(settings: Settings) -> list[str]:
    """Create the missing topics; return the names created. Existing topics are left as they are.

    Every producer and the worker call this first, so a broker that refuses our TLS/SASL settings stops them
    here with KafkaSecurityError (kafka_client.py) instead of an endless "Unable to bootstrap"."""
    await check_kafka_connection(settings)
    admin = AIOKafkaAdminClient(**kafka_client_kwargs(settings), client_id=f"{settings.app_id}-admin")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in settings.topic_names() if name not in existing]
        created = []
        for name in missing:
            try:
                await admin.create_topics(
                    [NewTopic(name, num_partitions=settings.topic_partitions,
                              replication_factor=settings.topic_replication)]
                )
                created.append(name)
            except TopicAlreadyExistsError:
                pass  # another worker created it between our list and create
        if created:
            log.info("created topics %s with %d partitions", created, settings.topic_partitions)
        return created
    finally:
        await admin.close()
