"""A consumed record Faust cannot decode: a dead letter, not a crashed agent.

faust-streaming 0.15.3 acks such a record and then throws its KeyDecodeError or ValueDecodeError into every
stream that reads the topic (``Conductor``, ``Channel.on_value_decode_error``), which crashes the agent at
its ``async for``. The live tables read typed result topics (predictions, image faces, processed frames,
identified faces), where a record written by another producer in another shape would stop the count. This
Topic class (the app's ``Topic`` setting) logs the record and sends a dead letter (stage ``parse``) instead;
the record stays acked, as Faust leaves it. Input topics are raw bytes and never fail to decode here.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import faust

from visionstream.core.faults import describe
from visionstream.core.records import ProcessingError, connect_error_headers, key_of_malformed, printable

log = logging.getLogger(__name__)


class DeadLetteringTopic(faust.Topic):
    async def on_key_decode_error(self, exc: Exception, message: Any) -> None:
        await self._dead_letter("key", exc, message)

    async def on_value_decode_error(self, exc: Exception, message: Any) -> None:
        await self._dead_letter("value", exc, message)

    async def _dead_letter(self, part: str, exc: Exception, message: Any) -> None:
        reason = printable(f"the {part} cannot be decoded: {describe(exc)}")
        log.warning("record %s[%d]@%d skipped: %s", message.topic, message.partition, message.offset, reason)
        app = self.app
        record = ProcessingError(
            image_key=key_of_malformed(message.key), stage="parse", reason=reason, hostname=app.settings.hostname,
            time=time.time(), topic=message.topic, partition=message.partition, offset=message.offset,
        )
        await app.dead_letter_topic.send(key=record.image_key, value=record, headers=connect_error_headers(record))
