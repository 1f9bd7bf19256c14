"""Tests of the running service: a real `lead-bot serve`, real Redis, fake GHL/Retell over HTTP."""
