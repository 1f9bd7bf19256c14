"""One router per resource: GHL webhooks, Retell webhooks, the operator's leads API, health and metrics."""
