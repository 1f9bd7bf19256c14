"""``lead-bot serve``'s service on a three-master Redis Cluster, in process: a workflow enrollment goes
through the partitioned intake, the scheduler's leader queues each due step there, the worker runs it, and
the leads get their day-3 text and day-7 call; an operator pause waits for its result. A command of the
service that crossed a slot would fail here (or leave an entry retrying, and the test waiting in vain)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio.cluster as acluster

from ghl_real_estate_ai.api.app import create_app
from ghl_real_estate_ai.config import Settings
from ghl_real_estate_ai.service import LeadBotService
from ghl_real_estate_ai.testing import keys, webhooks
from ghl_real_estate_ai.testing.fakes import FakeCrm, FakeVoice, make_contact

LOCATION = webhooks.DEFAULT_LOCATION_ID


@pytest.fixture
async def served(redis_cluster_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, LeadBotService, FakeCrm]]:
    config = Settings(
        redis_url=redis_cluster_url,
        ghl_api_token="pit-test",
        ghl_location_id=LOCATION,
        ghl_webhook_public_key=keys.TEST_ED25519_PUBLIC_PEM,
        ghl_webhook_rsa_public_key=keys.rsa_public_pem(),
        retell_api_key=keys.TEST_RETELL_API_KEY,
        api_token="operator-token",
        time_scale=86_400,
    )
    crm = FakeCrm()
    service = LeadBotService(config, crm=crm, voice=FakeVoice(crm), instance="cluster-test")
    await service.start()
    transport = httpx.ASGITransport(app=create_app(config, service=service))
    try:
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://lead-bot.test",
            headers={"Authorization": "Bearer operator-token"},
        ) as client:
            yield client, service, crm
    finally:
        await service.stop()


async def test_leads_run_their_whole_sequence_through_intake_and_scheduler_on_a_cluster(
    served: tuple[httpx.AsyncClient, LeadBotService, FakeCrm],
) -> None:
    client, service, crm = served
    assert isinstance(service.redis, acluster.RedisCluster)
    leads = [f"cluster-lead-{i}" for i in range(4)]
    for cid in leads:
        crm.add_contact(make_contact(cid))
        response = await client.post(
            "/webhooks/ghl/workflow", json={"contact_id": cid, "location": {"id": LOCATION}}
        )
        assert response.status_code == 200, response.text

    async def day_7_done(cid: str) -> bool:
        # the state is checkpointed when a run ends, a moment after its send reached the CRM
        lead = (await client.get(f"/api/leads/{cid}")).json()
        return "day_7" in (lead.get("completed") or {})

    deadline = time.monotonic() + 30
    while not all([await day_7_done(cid) for cid in leads]):
        assert time.monotonic() < deadline, {cid: [s.channel for s in crm.sent_to(cid)] for cid in leads}
        await asyncio.sleep(0.05)
    for cid in leads:
        assert [s.channel for s in crm.sent_to(cid)][:2] == ["sms", "call"]
        lead = (await client.get(f"/api/leads/{cid}")).json()
        assert lead["status"] == "active" and set(lead["completed"]) >= {"day_3", "day_7"}, lead
    paused = await client.post(f"/api/leads/{leads[0]}/pause", params={"wait": 20}, json={"reason": "test"})
    assert paused.status_code == 200 and paused.json()["lead"]["status"] == "paused", paused.text
    assert service.metrics.errors.labels("unhandled")._value.get() == 0
