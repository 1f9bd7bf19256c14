"""The demo world, shared by ``lead-bot demo``, LangGraph Studio and the notebooks: in-process fakes of GHL
and Retell (``fakes``), the demo's seeded leads (``leads``), the worlds a Studio run acts on (``world``),
the Studio graph's context and virtual clock (``studio``), and ``Simulation`` (``simulation``: the graph on
a virtual clock with a tiny in-memory scheduler). Import from the submodules."""
