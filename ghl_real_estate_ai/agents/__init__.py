"""LangGraph agents."""
