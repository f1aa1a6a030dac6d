"""Request metrics label by route template, so a customer id never becomes a series."""

from __future__ import annotations

import httpx
from fastapi import FastAPI, HTTPException

from shared.metrics import RequestMetrics, service_metrics


async def test_requests_are_counted_by_route_template_and_status() -> None:
    metrics = service_metrics("unit_requests")
    app = FastAPI()

    @app.get("/v1/customers/{customer_id}")
    async def customer(customer_id: str) -> dict[str, str]:
        if customer_id == "missing":
            raise HTTPException(404, "no such customer")
        return {"id": customer_id}

    app.add_middleware(RequestMetrics, metrics=metrics)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://switchboard") as client:
        for customer_id in ("ada", "grace", "missing"):
            await client.get(f"/v1/customers/{customer_id}")
        await client.get("/nowhere")

    def count(route: str, status: str) -> float:
        value = metrics.http_requests.labels("GET", route, status)._value.get()
        return float(value)

    assert count("/v1/customers/{customer_id}", "200") == 2
    assert count("/v1/customers/{customer_id}", "404") == 1
    assert count("unmatched", "404") == 1
    labels = {
        sample.labels.get("route") for m in metrics.http_requests.collect() for sample in m.samples
    }
    assert not {"/v1/customers/ada", "/v1/customers/grace"} & labels
