"""The outbox relay's sense of a broker that forgot what it acknowledged."""

from __future__ import annotations

from aiokafka import TopicPartition
from aiokafka.structs import RecordMetadata

from shared.outbox import BrokerMemory

P0, P1 = TopicPartition("t", 0), TopicPartition("t", 1)


def sent(partition: int, offset: int) -> RecordMetadata:
    return RecordMetadata("t", partition, TopicPartition("t", partition), offset, -1, -1, 0)


def test_offsets_moving_on_are_no_loss() -> None:
    memory = BrokerMemory()

    assert not memory.acknowledged([sent(0, 0), sent(0, 1), sent(1, 0)])
    assert not memory.acknowledged([sent(0, 2)])
    assert memory.partitions() == [P0, P1]


def test_an_offset_given_again_means_the_broker_forgot() -> None:
    memory = BrokerMemory()
    memory.acknowledged([sent(0, 10)])

    assert memory.acknowledged([sent(0, 0)])
    assert not memory.acknowledged([sent(0, 1)])  # from here on, the new log is watched


def test_a_partition_ending_before_it_did_means_the_broker_forgot() -> None:
    memory = BrokerMemory()
    memory.acknowledged([sent(0, 10), sent(1, 5)])

    assert not memory.probed({P0: 9, P1: 6})  # an end a little behind the acks is news to no one
    assert not memory.probed({P0: 11, P1: 6})
    assert not memory.probed({P0: 11})  # a partition not reported is not news
    assert memory.probed({P0: 11, P1: 0})
    assert not memory.probed({P0: 12, P1: 1})  # judged against the ends seen since
