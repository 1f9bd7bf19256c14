"""The web layer: the FastAPI app (``app.create_app``), its routes, signature checks and the durable intake.

Import ``ghl_real_estate_ai.api.app`` for the app; this package itself imports nothing heavy.
"""
