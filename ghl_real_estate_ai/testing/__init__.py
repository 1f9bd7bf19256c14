"""Fakes and builders shared by tests, the demo, the notebooks and the benchmarks.

``fakes`` (in-process GHL and Retell), ``harness`` (``Simulation``: the graph on a virtual clock),
``ghl_server``/``retell_server`` (wire-format HTTP fakes), ``webhooks`` and ``keys`` (signed webhooks),
``redis_server`` (a throw-away redis-server). Import from the submodules; this package imports nothing
heavy so the fakes load without the graph.
"""
