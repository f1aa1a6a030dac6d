"""Hardened input across the services, on the real broker and store: bodies that are not
JSON, control and bidi-override characters in names and handles, keys for no one."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx

from shared.embedded import EmbeddedStack
from tests.support import admin_headers, eventually
from tests.system import PUBLISHER, running

BROKEN = '{\n  "name": "Ada",\n  "tier" "gold"\n}'
WHERE_BROKEN = "Expecting ':' delimiter at line 3, column 10 (character 28)"


def post(**overrides: Any) -> dict[str, Any]:
    return {
        "channel": "twitter",
        "source": "listener",
        "external_id": uuid.uuid4().hex,
        "author": {"handle": "@ada", "display_name": "Ada"},
        "text": "Where is my parcel?",
    } | overrides


def refused_field(answer: httpx.Response) -> str:
    assert answer.status_code == 422, answer.text
    [problem] = answer.json()["detail"]
    assert "control or bidi-override" in problem["reason"] or "NUL" in problem["reason"]
    return str(problem["field"])


async def test_a_body_that_is_not_json_is_named_with_where_it_breaks_on_every_service(
    stack: EmbeddedStack, namespace: str, run_dir: Path
) -> None:
    async with running(stack, namespace, run_dir, ("ingest", "enrich", "router", "notify")) as s:
        json_type = {"content-type": "application/json"}
        answers = {
            "ingest": await s.http["ingest"].post(
                "/v1/interactions", content=BROKEN, headers=s.headers(PUBLISHER) | json_type
            ),
            "enrich": await s.http["enrich"].post(
                "/v1/customers", content=BROKEN, headers=admin_headers() | json_type
            ),
            "router": await s.http["router"].post(
                "/v1/agents", content=BROKEN, headers=admin_headers() | json_type
            ),
            "notify": await s.http["notify"].post(
                "/v1/subscriptions", content=BROKEN, headers=admin_headers() | json_type
            ),
        }
        not_utf8 = await s.http["enrich"].post(
            "/v1/customers", content=b'{"name": "Bj\xf6rn"}', headers=admin_headers() | json_type
        )
        too_deep = await s.http["router"].post(
            "/v1/agents", content=b"[" * 100_000, headers=admin_headers() | json_type
        )

    for service, answer in answers.items():
        assert answer.status_code == 400, (service, answer.text)
        assert answer.json() == {
            "detail": [{"field": "body", "reason": f"not valid JSON: {WHERE_BROKEN}"}]
        }, service
    assert not_utf8.status_code == 400
    assert not_utf8.json()["detail"] == [
        {
            "field": "body",
            "reason": "not valid JSON: not valid UTF-8 (invalid start byte) "
            "at line 1, column 13 (byte 12)",
        }
    ]
    assert too_deep.status_code == 400
    assert too_deep.json()["detail"] == [
        {"field": "body", "reason": "not valid JSON: nested too deeply to read"}
    ]


async def test_control_and_bidi_override_characters_in_names_and_handles_are_refused(
    stack: EmbeddedStack, namespace: str, run_dir: Path
) -> None:
    async with running(stack, namespace, run_dir, ("ingest", "enrich", "router")) as s:
        ingest, enrich, router = s.http["ingest"], s.http["enrich"], s.http["router"]
        publisher = s.headers(PUBLISHER)
        spoofed_handle = await ingest.post(
            "/v1/interactions",
            json=post(author={"handle": "@ada\u202egnp.exe"}),
            headers=publisher,
        )
        display_name = await ingest.post(
            "/v1/interactions",
            json=post(author={"handle": "@ada", "display_name": "Ada\x00"}),
            headers=publisher,
        )
        nul_in_text = await ingest.post(
            "/v1/interactions", json=post(text="late\x00again"), headers=publisher
        )
        multi_line_text = await ingest.post(
            "/v1/interactions", json=post(text="late\n\tagain \u202eright"), headers=publisher
        )
        customer_name = await enrich.post(
            "/v1/customers", json={"name": "Ada\x1b[2J"}, headers=admin_headers()
        )
        identity_handle = await enrich.post(
            "/v1/customers",
            json={"name": "Ada", "identities": [{"channel": "twitter", "handle": "ada\u2066"}]},
            headers=admin_headers(),
        )
        agent_name = await router.post(
            "/v1/agents", json={"name": "Grace\u202eecarG"}, headers=admin_headers()
        )
        renamed_agent = await router.patch(
            f"/v1/agents/{s.agent_id}", json={"name": "Grace\n"}, headers=admin_headers()
        )
        publisher_name = await ingest.post(
            "/v1/publishers", json={"name": "listener\x85"}, headers=admin_headers()
        )

    assert refused_field(spoofed_handle) == "author.handle"
    assert refused_field(display_name) == "author.display_name"
    assert refused_field(nul_in_text) == "text"
    assert multi_line_text.status_code == 202, multi_line_text.text
    assert refused_field(customer_name) == "name"
    assert refused_field(identity_handle) == "identities.0.handle"
    assert refused_field(agent_name) == "name"
    assert refused_field(renamed_agent) == "name"
    assert refused_field(publisher_name) == "name"


async def test_a_key_for_an_agent_or_publisher_never_registered_is_refused(
    stack: EmbeddedStack, namespace: str, run_dir: Path
) -> None:
    async with running(stack, namespace, run_dir, ("router", "enrich")) as s:
        router, enrich = s.http["router"], s.http["enrich"]
        nobody = await router.post(
            "/v1/keys",
            json={"role": "agent", "name": "ghost", "subject": "no-such-agent"},
            headers=admin_headers(),
        )
        no_publisher = await enrich.post(
            "/v1/keys",
            json={"role": "publisher", "name": "ghost", "subject": "no-such-publisher"},
            headers=admin_headers(),
        )
        registered = await router.post(
            "/v1/keys",
            json={"role": "agent", "name": "rotation", "subject": s.agent_id},
            headers=admin_headers(),
        )

        async def issued_elsewhere() -> httpx.Response | None:
            # Enrich knows the agent once its first key's record came over the topic.
            answer = await enrich.post(
                "/v1/keys",
                json={"role": "agent", "name": "rotation", "subject": s.agent_id},
                headers=admin_headers(),
            )
            return answer if answer.status_code == 201 else None

        elsewhere = await eventually(issued_elsewhere, timeout_s=30)
        operator = await enrich.post(
            "/v1/keys", json={"role": "operator", "name": "night shift"}, headers=admin_headers()
        )

    assert nobody.status_code == 422, nobody.text
    [problem] = nobody.json()["detail"]
    assert problem["field"] == "subject"
    assert "POST /v1/agents" in problem["reason"]
    assert no_publisher.status_code == 422, no_publisher.text
    assert no_publisher.json()["detail"][0]["field"] == "subject"
    assert registered.status_code == 201, registered.text
    assert registered.json()["subject"] == s.agent_id
    assert elsewhere.json()["subject"] == s.agent_id
    assert operator.status_code == 201, operator.text
