"""Notify against the real embedded broker and store, delivering to real HTTP receivers."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient
from standardwebhooks.webhooks import Webhook

from services.notify.cache import Subscriptions
from services.notify.config import NotifySettings
from services.notify.main import create_app
from services.notify.repository import AttemptRecord, NotifyRepository
from services.notify.service import HAND_OVER_ROOM_PER_WORKER
from shared.embedded import EmbeddedStack
from shared.events import (
    Assignment,
    AssignmentStatus,
    CloudEvent,
    DeadDelivery,
    assignment_type,
    utcnow,
)
from shared.mongo import Document, epoch_ms
from tests.support import (
    Receiver,
    admin_headers,
    at_least,
    client_of,
    eventually,
    metric_sum,
    publish,
    read_topic,
    receiving,
    service_settings,
)

FAST_RETRIES = (0.1, 0.1, 0.1, 0.1)


@dataclass
class Notify:
    http: httpx.AsyncClient
    settings: NotifySettings

    async def subscribe(self, url: str, **extra: Any) -> dict[str, Any]:
        answer = await self.http.post(
            "/v1/subscriptions", json={"url": url, **extra}, headers=admin_headers()
        )
        assert answer.status_code == 201, answer.text
        body: dict[str, Any] = answer.json()
        return body

    async def send(self, *events: CloudEvent[Assignment]) -> None:
        items = [(event.data.interaction_id, event) for event in events]
        await publish(self.settings.kafka, self.settings.kafka.topics.assignments, items)

    async def deliveries(self, status: str) -> list[dict[str, Any]]:
        answer = await self.http.get(
            "/v1/deliveries", params={"status": status}, headers=admin_headers()
        )
        result: list[dict[str, Any]] = answer.json()
        return result


NotifyFactory = Callable[..., AbstractAsyncContextManager[Notify]]


@pytest.fixture
def notify(stack: EmbeddedStack, namespace: str, run_dir: Path) -> NotifyFactory:
    def running(**overrides: Any) -> AbstractAsyncContextManager[Notify]:
        return _running_notify(stack, namespace, run_dir, overrides)

    return running


@asynccontextmanager
async def _running_notify(
    stack: EmbeddedStack, namespace: str, run_dir: Path, overrides: dict[str, Any]
) -> AsyncIterator[Notify]:
    settings = service_settings(
        NotifySettings,
        stack,
        namespace,
        run_dir,
        **({"allow_hosts": frozenset({"127.0.0.1"}), "retry_schedule_s": FAST_RETRIES} | overrides),
    )
    async with client_of(create_app(settings)) as http:
        yield Notify(http, settings)


def offered(agent_id: str = "agent-1", queue: str = "priority") -> CloudEvent[Assignment]:
    interaction_id = str(uuid.uuid4())
    data = Assignment.model_validate(
        {
            "interaction_id": interaction_id,
            "status": "offered",
            "queue": queue,
            "priority": 1,
            "rule": "valued-and-unhappy",
            "agent_id": agent_id,
            "offer": 1,
            "customer": {"id": "c-1", "tier": "platinum"},
            "sentiment": "negative",
            "channel": "twitter",
            "author_handle": "@ada",
            "text": "late again",
            "enqueued_at": utcnow(),
        }
    )
    return CloudEvent[Assignment](
        id=str(uuid.uuid4()),
        source="/test",
        type=assignment_type(AssignmentStatus.OFFERED),
        subject=interaction_id,
        data=data,
    )


async def test_delivery_is_signed_per_standard_webhooks(notify: NotifyFactory) -> None:
    async with notify() as service, receiving() as desk:
        subscription = await service.subscribe(desk.url)
        event = offered()

        await service.send(event)
        await eventually(lambda: at_least(desk.received, 1))

        [(headers, body)] = desk.received
        payload = Webhook(subscription["secret"]).verify(body, headers)
        assert payload["id"] == event.id
        assert payload["data"]["agent_id"] == "agent-1"
        assert subscription["secret"].startswith("whsec_")


async def test_failing_endpoint_gets_retried_under_one_webhook_id(notify: NotifyFactory) -> None:
    async with notify() as service, receiving(answers=[500, 503, 502]) as desk:
        subscription = await service.subscribe(desk.url)

        await service.send(offered())
        await eventually(lambda: service.deliveries("delivered"))

        assert len(desk.received) == 4
        assert len({headers["webhook-id"] for headers, _ in desk.received}) == 1
        [delivery] = await service.deliveries("delivered")
        attempts = await service.http.get(
            f"/v1/deliveries/{delivery['id']}/attempts", headers=admin_headers()
        )
        assert [a["status_code"] for a in attempts.json()] == [500, 503, 502, 200]
    assert_all_signed(desk, subscription["secret"])


async def test_a_redirect_is_a_failed_attempt_not_followed(notify: NotifyFactory) -> None:
    async with (
        notify() as service,
        receiving(
            answers=[307], failure_headers={"location": "http://127.0.0.1:9/elsewhere"}
        ) as desk,
    ):
        await service.subscribe(desk.url)

        await service.send(offered())
        [delivery] = await eventually(lambda: service.deliveries("delivered"))

        attempts = await service.http.get(
            f"/v1/deliveries/{delivery['id']}/attempts", headers=admin_headers()
        )
        assert [a["status_code"] for a in attempts.json()] == [307, 200]
        assert len(desk.received) == 2


async def test_an_endpoint_slower_than_the_timeout_gets_a_failed_attempt(
    notify: NotifyFactory,
) -> None:
    slow_retries = {"webhook_timeout_s": 0.3, "retry_schedule_s": (0.1, 5.0)}
    # The endpoint takes far longer than the timeout: an attempt that waited for it would
    # take 15 s, one cut off at the timeout well under half that, however slow the machine.
    async with notify(**slow_retries) as service, receiving(delay_s=15.0) as desk:
        await service.subscribe(desk.url)

        await service.send(offered())
        await eventually(lambda: at_least(desk.received, 2))
        [delivery] = await service.deliveries("pending")

        attempts = await service.http.get(
            f"/v1/deliveries/{delivery['id']}/attempts", headers=admin_headers()
        )
        first = attempts.json()[0]
        assert (first["status_code"], first["error"]) == (None, "TimeoutError")
        assert 300 <= first["latency_ms"] < 7_500


async def test_redelivered_event_is_delivered_once(notify: NotifyFactory) -> None:
    async with notify() as service, receiving() as desk:
        subscription = await service.subscribe(desk.url)
        event = offered()

        await service.send(event, event)
        await eventually(lambda: service.deliveries("delivered"))
        await _settle()

        assert len(desk.received) == 1
    assert_all_signed(desk, subscription["secret"])


async def test_filters_send_an_agent_only_its_own_offers(notify: NotifyFactory) -> None:
    async with notify() as service, receiving() as desk:
        subscription = await service.subscribe(desk.url, filters={"agent_id": "agent-2"})
        mine, other = offered(agent_id="agent-2"), offered(agent_id="agent-3")

        await service.send(other, mine)
        await eventually(lambda: at_least(desk.received, 1))
        await _settle()

        assert [json.loads(body)["id"] for _, body in desk.received] == [mine.id]
        assert_all_signed(desk, subscription["secret"])


async def test_spent_schedule_dead_letters_the_delivery(notify: NotifyFactory) -> None:
    async with notify(retry_schedule_s=(0.05,)) as service, receiving(answers=[500, 500]) as desk:
        subscription = await service.subscribe(desk.url)
        event = offered()

        await service.send(event)
        [dead] = await eventually(lambda: service.deliveries("dead"))
        topic = service.settings.kafka.topics.deliveries_dead
        [(key, dead_event)] = await read_topic(service.settings.kafka, topic, DeadDelivery, 1)

        assert dead["attempt_count"] == 2
        assert key == subscription["id"].encode()
        assert (dead_event.data.event_id, dead_event.data.last_status) == (event.id, 500)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest",
        "http://[::1]/x",
    ],
)
async def test_endpoints_on_private_addresses_are_refused(notify: NotifyFactory, url: str) -> None:
    async with notify(allow_hosts=frozenset()) as service:
        answer = await service.http.post(
            "/v1/subscriptions", json={"url": url}, headers=admin_headers()
        )

        assert answer.status_code == 422
        assert answer.json()["detail"][0]["field"] == "url"


async def test_subscription_secret_is_shown_once(notify: NotifyFactory) -> None:
    async with notify() as service:
        created = await service.subscribe("http://127.0.0.1:9/hook")
        shown = await service.http.get(
            f"/v1/subscriptions/{created['id']}", headers=admin_headers()
        )

        assert "secret" in created
        assert "secret" not in shown.json()


async def _settle(seconds: float = 1.5) -> None:
    """Give a wrong extra delivery time to show up before asserting there was none."""
    await asyncio.sleep(seconds)


async def test_retry_after_on_429_is_honoured(notify: NotifyFactory) -> None:
    # The schedule lasts long enough to take the wait: none goes past its end.
    async with (
        notify(retry_schedule_s=(0.1, 5.0)) as service,
        receiving(answers=[429], failure_headers={"Retry-After": "2"}) as desk,
    ):
        subscription = await service.subscribe(desk.url)

        await service.send(offered())
        await eventually(lambda: service.deliveries("delivered"))

        assert_all_signed(desk, subscription["secret"])
        assert len(desk.arrivals) == 2
        assert desk.arrivals[1] - desk.arrivals[0] >= 1.9  # the schedule alone says 0.1 s


# Retry-After answers that once parked a delivery for millennia (a huge number), or broke
# the recording of its attempt (infinite, or too large for a date), beside harmless ones.
CAPPED_RETRY_AFTERS = ("99999999999", "inf", "1e20", "Fri, 31 Dec 9999 23:59:59 GMT")
NO_WAIT_RETRY_AFTERS = ("-5", "nan")


async def test_every_retry_after_is_capped_and_a_failing_delivery_dead_lettered(
    notify: NotifyFactory,
) -> None:
    # Five 0.2 s steps: the schedule ends 1.2 s after the first attempt at the latest. The
    # 1 s ceiling is within it once, then cut at its end; that try is the last.
    schedule = (0.2,) * 5
    settings = {"retry_schedule_s": schedule, "retry_after_max_s": 1.0, "breaker_threshold": 100}
    values = CAPPED_RETRY_AFTERS + NO_WAIT_RETRY_AFTERS
    async with notify(**settings) as service, AsyncExitStack() as desks:
        by_value: dict[str, tuple[Receiver, str]] = {}
        for n, value in enumerate(values):
            failing = [429 if n % 2 else 503] * 20
            desk = await desks.enter_async_context(
                receiving(answers=failing, failure_headers={"Retry-After": value})
            )
            by_value[value] = (desk, (await service.subscribe(desk.url))["id"])

        await service.send(offered())
        dead = await eventually(
            lambda: _at_least_dead(service, len(values)), timeout_s=90, interval_s=0.5
        )
        topic = service.settings.kafka.topics.deliveries_dead
        dead_events = await read_topic(service.settings.kafka, topic, DeadDelivery, len(values))

        for value, (desk, subscription_id) in by_value.items():
            [delivery] = [d for d in dead if d["subscription_id"] == subscription_id]
            attempts = await service.http.get(
                f"/v1/deliveries/{delivery['id']}/attempts", headers=admin_headers()
            )
            # Every call the endpoint saw is an attempt recorded, and counted.
            assert len(attempts.json()) == delivery["attempt_count"] == len(desk.received), value
            if value in CAPPED_RETRY_AFTERS:
                assert delivery["attempt_count"] == 3, value  # first, ceiling, schedule's end
                assert desk.arrivals[1] - desk.arrivals[0] >= 0.9, value  # the ceiling's wait
            else:
                assert delivery["attempt_count"] == len(schedule) + 1, value  # no extra wait
    assert {event.data.delivery_id for _, event in dead_events} == {d["id"] for d in dead}


async def _at_least_dead(service: Notify, count: int) -> list[dict[str, Any]] | None:
    dead = await service.deliveries("dead")
    return dead if len(dead) >= count else None


async def test_a_restart_between_retries_keeps_the_schedule(notify: NotifyFactory) -> None:
    async with receiving(answers=[500]) as desk:
        async with notify(retry_schedule_s=(3.0,)) as service:
            subscription = await service.subscribe(desk.url)
            await service.send(offered())
            await eventually(lambda: at_least(desk.received, 1))
        async with notify(retry_schedule_s=(3.0,)) as restarted:
            [delivered] = await eventually(lambda: restarted.deliveries("delivered"))

    assert delivered["attempt_count"] == 2
    assert len({headers["webhook-id"] for headers, _ in desk.received}) == 1
    assert desk.arrivals[1] - desk.arrivals[0] >= 2.0
    assert_all_signed(desk, subscription["secret"])


async def test_a_slow_endpoint_does_not_hold_up_a_healthy_one(notify: NotifyFactory) -> None:
    # The slow endpoint answers after 15 s and is never cut off sooner: the healthy one,
    # given 10 s, is not held up if it is served before the slow one has answered.
    async with (
        notify(webhook_timeout_s=60.0) as service,
        receiving(delay_s=15.0) as slow,
        receiving() as healthy,
    ):
        await service.subscribe(slow.url)
        subscription = await service.subscribe(healthy.url)

        await service.send(offered(), offered())
        await eventually(lambda: at_least(healthy.received, 2), timeout_s=10.0)

        assert slow.answered == 0  # the slow one is still busy with its first
        assert_all_signed(healthy, subscription["secret"])


async def test_a_dead_delivery_can_be_replayed(notify: NotifyFactory) -> None:
    async with notify(retry_schedule_s=(0.05,)) as service, receiving(answers=[500, 500]) as desk:
        subscription = await service.subscribe(desk.url)
        await service.send(offered())
        [dead] = await eventually(lambda: service.deliveries("dead"))

        replayed = await service.http.post(
            "/v1/deliveries/replay",
            json={"since": "2000-01-01T00:00:00Z", "until": "2100-01-01T00:00:00Z"},
            headers=admin_headers(),
        )
        [delivered] = await eventually(lambda: service.deliveries("delivered"))

    assert replayed.json() == {"replayed": 1}
    assert delivered["id"] == dead["id"]
    assert delivered["attempt_count"] == 3
    assert len({headers["webhook-id"] for headers, _ in desk.received}) == 1
    assert_all_signed(desk, subscription["secret"])


async def test_delivery_goes_to_the_resolved_address_under_the_endpoints_name(
    notify: NotifyFactory,
) -> None:
    async with notify(allow_hosts=frozenset({"localhost"})) as service, receiving() as desk:
        named_url = desk.url.replace("127.0.0.1", "localhost")
        subscription = await service.subscribe(named_url)

        await service.send(offered())
        await eventually(lambda: at_least(desk.received, 1))

        [(headers, _)] = desk.received
        assert headers["host"] == named_url.split("/")[2]
        assert_all_signed(desk, subscription["secret"])


async def test_after_a_secret_rotation_deliveries_verify_with_old_and_new_secret(
    notify: NotifyFactory,
) -> None:
    async with notify() as service, receiving() as desk:
        subscription = await service.subscribe(desk.url, format="slack")
        rotated = await service.http.post(
            f"/v1/subscriptions/{subscription['id']}/rotate-secret", headers=admin_headers()
        )

        await service.send(offered())
        await eventually(lambda: at_least(desk.received, 1))

    [(headers, body)] = desk.received
    new_secret = rotated.json()["secret"]
    assert new_secret != subscription["secret"]
    assert Webhook(subscription["secret"]).verify(body, headers) == Webhook(new_secret).verify(
        body, headers
    )
    assert "text" in json.loads(body)


async def test_an_endpoint_that_keeps_failing_is_left_alone_for_the_cooldown(
    notify: NotifyFactory,
) -> None:
    settings = {"retry_schedule_s": (0.05,) * 10, "breaker_threshold": 2, "breaker_cooldown_s": 8.0}
    async with notify(**settings) as service, receiving(answers=[500] * 3) as failing:
        subscription = await service.subscribe(failing.url)
        # The counters are the process's: count from what earlier tests left in them.
        retries_before = await _attempts(service, "retry")

        await service.send(offered())
        await eventually(lambda: at_least(failing.arrivals, 3), timeout_s=30)

        async def third_counted() -> bool:
            return await _attempts(service, "retry") - retries_before >= 3

        await eventually(third_counted)
        retries = await _attempts(service, "retry") - retries_before
        open_breakers = await metric_sum(
            service.http, "/metrics", "switchboard_notify_open_breakers"
        )

    gaps = [
        later - earlier
        for earlier, later in zip(failing.arrivals, failing.arrivals[1:], strict=False)
    ]
    assert gaps[0] < 4.0  # the first retry follows the 0.05 s schedule, not the cooldown
    assert gaps[1] >= 7.5  # then the breaker holds attempts back for the cooldown
    assert retries == 3  # three failed attempts, each one to retry
    assert open_breakers == 1.0  # the trial failed too: the breaker is open again
    assert_all_signed(failing, subscription["secret"])


async def _attempts(service: Notify, outcome: str) -> float:
    return await metric_sum(
        service.http, "/metrics", "switchboard_notify_attempts_total", outcome=outcome
    )


async def test_410_gone_disables_the_subscription_and_it_can_be_enabled_again(
    notify: NotifyFactory,
) -> None:
    async with notify() as service, receiving(answers=[410]) as desk:
        subscription = await service.subscribe(desk.url)
        await service.send(offered())
        [cancelled] = await eventually(lambda: service.deliveries("cancelled"))
        paused = await service.http.get(
            f"/v1/subscriptions/{subscription['id']}", headers=admin_headers()
        )

        resumed = await service.http.put(
            f"/v1/subscriptions/{subscription['id']}/enabled",
            json={"enabled": True},
            headers=admin_headers(),
        )
        await service.send(offered())
        [delivered] = await eventually(lambda: service.deliveries("delivered"))
        since = await service.http.get(
            "/v1/deliveries",
            params={"since": delivered["created_at"]},
            headers=admin_headers(),
        )

    assert cancelled["attempt_count"] == 1
    assert (paused.json()["enabled"], paused.json()["disabled_reason"]) == (
        False,
        "endpoint answered 410 Gone",
    )
    assert resumed.json()["enabled"] is True
    assert [d["id"] for d in since.json()] == [delivered["id"]], (
        since.json(),
        delivered,
        cancelled,
    )
    assert_all_signed(desk, subscription["secret"])


def assert_all_signed(desk: Receiver, secret: str) -> None:
    """Every request the receiver got verifies with the subscription's secret."""
    for headers, body in desk.received:
        Webhook(secret).verify(body, headers)


@pytest.fixture
async def repository(client: AsyncMongoClient[Document], namespace: str) -> NotifyRepository:
    repository = NotifyRepository(client[f"{namespace}_notify"])
    await repository.ensure_indexes()
    return repository


async def test_workers_claiming_at_once_never_take_the_same_delivery(
    repository: NotifyRepository,
) -> None:
    now = utcnow()
    await repository.insert_deliveries(
        [
            {"_id": f"d{n}", "status": "pending", "next_attempt_ms": epoch_ms(now) - n}
            for n in range(60)
        ]
    )
    lease = now + timedelta(seconds=60)

    # Two workers read the same due deliveries before either leases them; the second
    # read 10 more than the first.
    first_read, second_read = await repository.due(now, 40), await repository.due(now, 50)
    first = await repository.lease(first_read, now, lease)
    second = await repository.lease(second_read, now, lease + timedelta(seconds=1))
    rest = await repository.claim_due(now, lease, limit=40)

    assert len(first_read) == len(first) == 40
    # It lost the race for the 40, and took the 10 only it read: none taken twice.
    assert {d["_id"] for d in second} == {d["_id"] for d in second_read[40:]}
    assert len(second) == 10
    assert {d["_id"] for d in first + second + rest} == {f"d{n}" for n in range(60)}
    assert len(rest) == 10
    assert await repository.claim_due(now, lease, limit=40) == []  # all leased


async def test_an_attempt_is_logged_on_its_delivery_once_beside_older_logged_apart(
    repository: NotifyRepository,
) -> None:
    await repository.insert_deliveries([{"_id": "d1", "status": "pending", "attempt_count": 1}])
    # Attempts were once documents of their own: the first of this one was logged so.
    await repository.legacy_attempts.insert_one(
        {"_id": "d1:1", "delivery_id": "d1", "number": 1, "status_code": 500}
    )
    second = AttemptRecord("d1", 2, {"status_code": 200, "at": utcnow()}, {"status": "delivered"})

    await repository.record_attempts([second])
    await repository.record_attempts([second])  # again, as after a crash before it was known

    attempts = await repository.list_attempts("d1")
    assert [(a["number"], a["status_code"]) for a in attempts or []] == [(1, 500), (2, 200)]
    [delivery] = await repository.list_deliveries({"_id": "d1"}, 1)
    assert (delivery["attempt_count"], delivery["status"]) == (2, "delivered")
    assert "attempts" not in delivery  # the list leaves them to list_attempts
    assert await repository.list_attempts("nowhere") is None


async def test_subscriptions_changed_elsewhere_are_seen_within_their_max_age(
    repository: NotifyRepository,
) -> None:
    # Long enough for two writes and a read on however slow a machine.
    max_age_s = 5.0
    subscriptions = Subscriptions(repository, max_age_s=max_age_s)
    await repository.insert_subscription({"_id": "s1", "enabled": True})
    assert [s["_id"] for s in await subscriptions.enabled()] == ["s1"]
    stale_from = time.monotonic() + max_age_s

    # Another replica adds a subscription and pauses the first.
    await repository.insert_subscription({"_id": "s2", "enabled": True})
    await repository.disable_subscription("s1", "by request")
    assert [s["_id"] for s in await subscriptions.enabled()] == ["s1"]  # as last read
    await asyncio.sleep(max(0.0, stale_from - time.monotonic()) + 0.1)
    assert [s["_id"] for s in await subscriptions.enabled()] == ["s2"]

    # One not seen yet is read at once, and so is a change made through this process.
    await repository.insert_subscription({"_id": "s3", "enabled": True})
    assert (await subscriptions.of({"s3"})).keys() == {"s1", "s2", "s3"}
    await repository.disable_subscription("s2", "by request")
    subscriptions.changed()
    assert [s["_id"] for s in await subscriptions.enabled()] == ["s3"]


async def test_deliveries_handed_over_but_not_begun_at_shutdown_go_out_at_once_after(
    notify: NotifyFactory,
) -> None:
    """Fresh deliveries are stored leased to the process that will send them (for
    webhook_timeout_s + 30 s). Stopping, it frees those it has not begun, so the next
    notify sends them now, not when their leases run out."""
    one_at_a_time = {"max_concurrent_deliveries": 1}
    async with receiving(delay_s=0.3) as desk:
        async with notify(**one_at_a_time) as service:
            await service.subscribe(desk.url)
            await service.send(*(offered() for _ in range(10)))
            await eventually(lambda: at_least(desk.received, 1))
            stored = await service.http.get("/v1/deliveries", headers=admin_headers())
            assert len(stored.json()) == 10
        async with notify(**one_at_a_time):
            await eventually(lambda: at_least(desk.received, 10), timeout_s=20.0)
            await _settle()

    assert len({headers["webhook-id"] for headers, _ in desk.received}) == 10
    assert len(desk.received) == 10


async def test_fresh_deliveries_kept_waiting_by_a_backlog_go_back_to_the_store(
    notify: NotifyFactory,
) -> None:
    """A backlog in the store goes first; fresh deliveries that wait past
    ``hand_over_wait_s`` meanwhile are released and claimed next, not left to leases
    that run for 40 s."""
    count = HAND_OVER_ROOM_PER_WORKER + 8  # one worker: eight more than its room
    async with (
        receiving(delay_s=0.1) as desk,
        notify(max_concurrent_deliveries=1, hand_over_wait_s=0.5) as service,
    ):
        await service.subscribe(desk.url)
        await service.send(*(offered() for _ in range(count)))
        await eventually(lambda: at_least(desk.received, count), timeout_s=30.0)
        await _settle()

    assert len({headers["webhook-id"] for headers, _ in desk.received}) == count
    assert len(desk.received) == count


async def test_an_endpoint_with_a_user_name_or_password_is_refused(
    notify: NotifyFactory,
) -> None:
    async with notify() as service, receiving() as desk:
        with_password = desk.url.replace("http://", "http://desk-user:s3cret@")
        answer = await service.http.post(
            "/v1/subscriptions", json={"url": with_password}, headers=admin_headers()
        )

    assert answer.status_code == 422
    [problem] = answer.json()["detail"]
    assert problem["field"] == "url"
    assert "user name or password" in problem["reason"]
    assert "s3cret" not in answer.text


async def test_a_stored_endpoints_password_is_neither_shown_nor_audited(
    notify: NotifyFactory, repository: NotifyRepository
) -> None:
    async with notify() as service:
        await repository.insert_subscription(
            {
                "_id": "legacy",
                "url": "http://desk-user:s3cret@127.0.0.1:9/hook",
                "event_types": ["io.switchboard.assignment.*"],
                "filters": {},
                "format": "cloudevents",
                "secret": "whsec_c2VjcmV0",
                "enabled": True,
                "created_at": utcnow(),
            }
        )
        shown = await service.http.get("/v1/subscriptions/legacy", headers=admin_headers())
        paused = await service.http.put(
            "/v1/subscriptions/legacy/enabled", json={"enabled": False}, headers=admin_headers()
        )
        audit = await service.http.get("/v1/audit", headers=admin_headers())

    assert shown.json()["url"] == "http://127.0.0.1:9/hook"
    assert paused.json()["url"] == "http://127.0.0.1:9/hook"
    [change] = [e for e in audit.json()["entries"] if e["target"] == {"subscription_id": "legacy"}]
    assert change["change"]["before"]["url"] == "http://127.0.0.1:9/hook"
    assert "s3cret" not in shown.text + paused.text + audit.text


async def test_an_allow_list_entry_with_a_port_admits_that_port_and_no_other(
    notify: NotifyFactory,
) -> None:
    async with receiving() as desk, receiving() as other:
        desk_port = desk.url.split("/")[2]  # 127.0.0.1:PORT
        async with notify(allow_hosts=frozenset({desk_port})) as service:
            subscription = await service.subscribe(desk.url)
            refused = await service.http.post(
                "/v1/subscriptions", json={"url": other.url}, headers=admin_headers()
            )

            await service.send(offered())
            await eventually(lambda: at_least(desk.received, 1))

    assert refused.status_code == 422
    assert refused.json()["detail"][0]["field"] == "url"
    assert other.received == []
    assert_all_signed(desk, subscription["secret"])
