"""Long-lived services around the graph: the send ledger, the lead index, the scheduler, the runner."""
