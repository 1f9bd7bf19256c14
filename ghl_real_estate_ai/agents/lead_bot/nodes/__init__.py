"""The lead graph's nodes, one module per group: the timed sequence, operator actions, the conversation."""
