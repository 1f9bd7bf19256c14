"""Test helpers, never imported by the product: ``ghl_server``/``retell_server`` (wire-format HTTP fakes of
GHL and Retell), ``webhooks`` and ``keys`` (signed webhooks), ``redis_server`` (a throw-away redis-server),
``worker_main`` (a scheduler worker process for the multi-process tests) and ``fakes`` (a re-export of the
in-process fakes, which live in the product's demo world, ``ghl_real_estate_ai.sandbox``). Import from the
submodules; this package imports nothing heavy.
"""
