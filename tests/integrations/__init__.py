"""Tests of the GHL and Retell clients, the rate limiters, webhook signatures and the fakes."""
