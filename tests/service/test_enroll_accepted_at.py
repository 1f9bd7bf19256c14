"""An enrollment the service accepted but applied later (its worker process was down meanwhile) counts
the lead's days from when it was accepted: the service stamps the stored event with its virtual time."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from ghl_real_estate_ai.api.intake import IntakeEntry
from ghl_real_estate_ai.config import Settings
from ghl_real_estate_ai.sequence import parse_time
from ghl_real_estate_ai.service import LeadBotService
from ghl_real_estate_ai.testing import keys
from ghl_real_estate_ai.testing.fakes import FakeCrm, FakeVoice, make_contact


async def test_an_enrollment_applied_late_keeps_the_time_it_was_accepted(redis_url: str) -> None:
    config = Settings(
        redis_url=redis_url, ghl_api_token="pit-test", ghl_location_id="loc-1",
        ghl_webhook_public_key=keys.TEST_ED25519_PUBLIC_PEM, ghl_webhook_rsa_public_key=keys.rsa_public_pem(),
        retell_api_key=keys.TEST_RETELL_API_KEY, api_token="operator-token", time_scale=86400.0,
    )
    crm = FakeCrm()
    crm.add_contact(make_contact("c-late"))
    service = LeadBotService(config, crm=crm, voice=FakeVoice(crm), run_worker=False, run_scheduler=False)
    await service.start()
    try:
        accepted_real = time.time() - 0.5  # stored half a real second (12 virtual hours) ago
        accepted = service.timebase.to_virtual(datetime.fromtimestamp(accepted_real, UTC))
        entry = IntakeEntry(id="1-0", contact_id="c-late", event={"type": "enroll", "source": "workflow"},
                            source="webhook", received_at_ms=int(accepted_real * 1000))
        result = await service.handle_entry(entry)
        assert result["applied"] is True
        enrolled = parse_time(result["lead"]["enrolled_at"])
        assert enrolled is not None and abs(enrolled - accepted) < timedelta(minutes=2)
        assert service.now() - enrolled > timedelta(hours=11)  # not the moment it was applied
    finally:
        await service.stop()
