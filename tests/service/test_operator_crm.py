"""The operator commands' runner never talks to GHL: its ``OperatorCrm`` refuses every call, saying why."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ghl_real_estate_ai.errors import PermanentIntegrationError
from ghl_real_estate_ai.service import OperatorCrm


async def test_every_ghl_call_is_refused_with_the_reason() -> None:
    crm = OperatorCrm()
    calls = [
        crm.get_contact("c1"),
        crm.send_sms("c1", "hi"),
        crm.send_email("c1", "s", "<p>hi</p>"),
        crm.set_dnd("c1", "sms", True),
        crm.add_tags("c1", ["x"]),
        crm.remove_tags("c1", ["x"]),
        crm.add_note("c1", "n"),
        crm.add_task("c1", "t", "b", "2026-03-02T15:00:00Z", None),
    ]
    for call in calls:
        with pytest.raises(PermanentIntegrationError, match="operator commands do not call GHL"):
            await call
    lookup = await crm.find_sent_message("c1", channel="sms", text="hi", since=datetime.now(UTC))
    assert lookup.outcome == "unknown"
