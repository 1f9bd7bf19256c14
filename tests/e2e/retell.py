"""A fake Retell that behaves like the real one after a call is placed: it posts the signed call webhooks
back to the service a fraction of a real second later, retrying like Retell does.

Each successful ``POST /v2/create-phone-call`` schedules, from its own daemon thread, ``call_started`` (only
for a call that connected), ``call_ended`` and ``call_analyzed``, in that order, ``delay`` real seconds later
(0.05-0.3 s, drawn per contact from the seed). Every event is re-signed for each attempt and retried up to 3
times on a non-2xx answer or a transport error, ``retry_delays`` apart (long enough to cover a service
restart, so the events of a call placed just before a SIGKILL still arrive). The outcomes never end the
sequence (see ``conversation/calls.py``): voicemail, no answer, or an answered call that went nowhere.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.responses import Response

from ghl_real_estate_ai.testing import webhooks
from ghl_real_estate_ai.testing.fake_http import RecordedRequest
from ghl_real_estate_ai.testing.retell_server import FakeRetellServer

# name -> FakeRetellServer.finish_call keyword arguments
OUTCOMES: dict[str, dict[str, Any]] = {
    "voicemail": {"disconnection_reason": "voicemail_reached", "in_voicemail": True, "call_successful": False,
                  "user_sentiment": "Neutral", "summary": "Reached voicemail; left a short message."},
    "no_answer": {"disconnection_reason": "dial_no_answer", "call_successful": False,
                  "user_sentiment": "Neutral", "summary": "The call was not answered."},
    "answered": {"disconnection_reason": "user_hangup", "call_successful": False, "user_sentiment": "Neutral",
                 "summary": "Lead is still looking and did not want to talk now."},
}
RETRY_DELAYS = (0.5, 1.5, 4.0)  # real seconds before retries 1, 2 and 3


@dataclass
class Delivery:
    call_id: str
    contact_id: str
    event: str
    statuses: list[int | None] = field(default_factory=list)

    @property
    def delivered(self) -> bool:
        return bool(self.statuses) and self.statuses[-1] is not None and 200 <= self.statuses[-1] < 300


def _draw(seed: int, contact_id: str, salt: str) -> float:
    digest = hashlib.sha256(f"{seed}:{salt}:{contact_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class FakeRetellWithWebhooks(FakeRetellServer):
    """``FakeRetellServer`` that delivers each call's webhooks to ``webhook_url`` (set once the service
    runs)."""

    def __init__(self, *, seed: int = 0, delay: tuple[float, float] = (0.05, 0.3),
                 outcomes: tuple[str, ...] = tuple(OUTCOMES), retry_delays: tuple[float, ...] = RETRY_DELAYS,
                 **kwargs: Any) -> None:
        super().__init__(seed=seed, **kwargs)
        self.webhook_url: str | None = None
        self.hook_seed = seed
        self.delay = delay
        self.outcomes = outcomes
        self.retry_delays = retry_delays
        self.deliveries: list[Delivery] = []
        self._hooks_stop = threading.Event()
        self._hook_threads: list[threading.Thread] = []
        # One client for every delivery thread (httpx clients are thread-safe): building one loads the CA
        # bundle, about 25 ms with the GIL held, which stalled every fake in the test process, GHL's and
        # Retell's own answers included, for that long at each call of a day_7 burst.
        self._hooks_client = httpx.Client(timeout=10.0)

    def outcome_for(self, contact_id: str) -> str:
        return self.outcomes[int(_draw(self.hook_seed, contact_id, "outcome") * len(self.outcomes))]

    def _create(self, record: RecordedRequest) -> Response:
        response = super()._create(record)
        if response.status_code == 201:
            call = json.loads(bytes(response.body))
            contact_id = str((call.get("metadata") or {}).get("ghl_contact_id", ""))
            low, high = self.delay
            wait = low + (high - low) * _draw(self.hook_seed, f"{contact_id}:{call['call_id']}", "delay")
            thread = threading.Thread(target=self._deliver_later, args=(call["call_id"], contact_id, wait),
                                      name=f"retell-webhooks-{call['call_id'][:8]}", daemon=True)
            with self._state_lock:
                self._hook_threads.append(thread)
            thread.start()
        return response

    def _deliver_later(self, call_id: str, contact_id: str, wait: float) -> None:
        try:
            if self._hooks_stop.wait(wait):
                return
            events = self.finish_call(call_id, **OUTCOMES[self.outcome_for(contact_id)])
            for payload in events:
                delivery = Delivery(call_id, contact_id, payload["event"])
                with self._state_lock:
                    self.deliveries.append(delivery)
                self._deliver(self._hooks_client, payload, delivery)
                if self._hooks_stop.is_set():
                    return
        except Exception:  # a delivery thread must never die loudly: the judge sees the effect
            return

    def _deliver(self, client: httpx.Client, payload: dict[str, Any], delivery: Delivery) -> None:
        for attempt in range(len(self.retry_delays) + 1):
            if attempt and self._hooks_stop.wait(self.retry_delays[attempt - 1]):
                return
            url = self.webhook_url
            status: int | None = None
            if url is not None:
                signed = webhooks.sign_retell_webhook(payload, api_key=self.api_key)
                try:
                    status = client.post(url, content=signed.body, headers=signed.headers).status_code
                except httpx.HTTPError:
                    status = None
            delivery.statuses.append(status)
            if status is not None and 200 <= status < 300:
                return

    def stop(self) -> None:
        self._hooks_stop.set()
        with self._state_lock:
            threads = list(self._hook_threads)
        for thread in threads:
            thread.join(timeout=5)
        self._hooks_client.close()
        super().stop()
