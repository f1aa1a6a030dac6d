"""A consumer's sense of a broker that lost its log (a read position past a partition's end)
and of its lag."""

from __future__ import annotations

from aiokafka import TopicPartition

from shared.kafka import lags, past_their_end

P0, P1, P2 = TopicPartition("t", 0), TopicPartition("t", 1), TopicPartition("u", 0)


def test_positions_at_or_before_the_end_are_no_loss() -> None:
    # Caught up (position == end) and behind (position < end) are both ordinary.
    assert past_their_end({P0: 10, P1: 3}, {P0: 10, P1: 7}) == []


def test_a_position_past_the_end_means_the_log_was_lost() -> None:
    assert past_their_end({P0: 700, P1: 5}, {P0: 12, P1: 9}) == [P0]


def test_an_emptied_partition_is_a_loss_even_for_a_consumer_one_record_in() -> None:
    assert past_their_end({P0: 1}, {P0: 0}) == [P0]


def test_every_partition_past_its_end_is_named_in_order() -> None:
    assert past_their_end({P2: 4, P1: 9, P0: 3}, {P2: 0, P1: 0, P0: 3}) == [P1, P2]


def test_an_unknown_position_or_end_proves_nothing() -> None:
    # A partition not fetched yet has no end; one awaiting a reset has no position.
    assert past_their_end({P0: 700, P1: None}, {P0: None, P1: 0}) == []
    assert past_their_end({P0: 700}, {}) == []


def test_lag_is_what_a_partition_holds_past_its_committed_offset() -> None:
    assert lags({P0: 10, P1: 3}, {P0: 10, P1: 7}) == {P0: 0, P1: 4}


def test_a_committed_offset_past_the_end_lags_by_nothing() -> None:
    # The broker lost its log: the consumers read it again, and lag from there.
    assert lags({P0: 700}, {P0: 12}) == {P0: 0}


def test_unknown_offsets_or_ends_show_no_lag() -> None:
    assert lags({P0: None, P1: 4}, {P0: 9}) == {}
