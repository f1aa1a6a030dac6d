"""Notify's alerts: an item that waited past its SLA reaches the subscriptions that asked
for breaches, over the real broker, store and HTTP."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

from shared.events import SLA_BREACHED, CloudEvent, CustomerRef, SlaBreach, utcnow
from tests.integration.test_notify import NotifyFactory, offered
from tests.integration.test_notify import notify as notify  # the fixture
from tests.support import admin_headers, at_least, eventually, publish, receiving


def breached(queue: str = "priority", tier: str = "platinum") -> CloudEvent[SlaBreach]:
    interaction_id = str(uuid.uuid4())
    data = SlaBreach(
        interaction_id=interaction_id,
        queue=queue,
        priority_before=3,
        priority_after=1,
        queue_after="overflow",
        waited_s=312.5,
        customer=CustomerRef(id="c-1", tier=tier),
        enqueued_at=utcnow() - timedelta(seconds=312.5),
    )
    return CloudEvent[SlaBreach](
        id=str(uuid.uuid4()), source="/test", type=SLA_BREACHED, subject=interaction_id, data=data
    )


async def test_a_breach_reaches_the_subscriptions_that_asked_for_it(
    notify: NotifyFactory,
) -> None:
    async with (
        notify() as service,
        receiving() as alerts,
        receiving() as chat,
        receiving() as desk,
        receiving() as silver_only,
    ):
        alerts_id = (await service.subscribe(alerts.url, event_types=[SLA_BREACHED]))["id"]
        chat_id = (
            await service.subscribe(chat.url, event_types=["io.switchboard.sla.*"], format="slack")
        )["id"]
        desk_id = (await service.subscribe(desk.url))["id"]  # the default: assignments only
        await service.subscribe(silver_only.url, event_types=["*"], filters={"tier": "silver"})
        breach, work = breached(), offered()
        kafka = service.settings.kafka
        await publish(kafka, kafka.topics.escalations, [(breach.data.interaction_id, breach)])
        await publish(kafka, kafka.topics.assignments, [(work.data.interaction_id, work)])

        await eventually(lambda: at_least(alerts.received, 1))
        await eventually(lambda: at_least(chat.received, 1))
        await eventually(lambda: at_least(desk.received, 1))
        [(_, body)] = alerts.received
        sent = json.loads(body)
        assert (sent["type"], sent["id"]) == (SLA_BREACHED, breach.id)
        assert sent["data"]["priority_after"] == 1
        text = json.loads(chat.received[0][1])["text"]
        assert "SLA breached" in text
        assert "overflow" in text
        assert json.loads(desk.received[0][1])["id"] == work.id
        # Each event's deliveries are stored together, so all of them exist by now: one per
        # subscription that asked, none for the one filtered to another tier.
        stored = (await service.http.get("/v1/deliveries", headers=admin_headers())).json()
        assert sorted((d["event_id"], d["subscription_id"]) for d in stored) == sorted(
            [(breach.id, alerts_id), (breach.id, chat_id), (work.id, desk_id)]
        )


async def test_a_subscription_to_an_event_notify_never_sends_is_refused(
    notify: NotifyFactory,
) -> None:
    async with notify() as service:
        answer = await service.http.post(
            "/v1/subscriptions",
            json={"url": "http://127.0.0.1:9/hook", "event_types": ["io.switchboard.delivery.*"]},
            headers=admin_headers(),
        )

    assert answer.status_code == 422, answer.text
    [error] = answer.json()["detail"]
    assert error["field"].startswith("event_types")
    assert "matches no event type notify delivers" in error["reason"]
