"""Lead Bot: the 3-7-30 follow-up sequence for GoHighLevel real-estate teams, as a LangGraph state machine."""

__version__ = "0.1.0"
