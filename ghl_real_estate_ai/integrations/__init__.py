"""Clients of the external APIs (GHL, Retell) and the protocols nodes depend on instead of them."""
