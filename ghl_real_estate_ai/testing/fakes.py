"""Re-exports the in-process GHL and Retell fakes, which live in the product's demo world
(``ghl_real_estate_ai.sandbox.fakes``), so tests and benchmarks keep importing them from here."""

from ghl_real_estate_ai.sandbox.fakes import FakeCrm, FakeVoice, Sent, make_contact

__all__ = ["FakeCrm", "FakeVoice", "Sent", "make_contact"]
