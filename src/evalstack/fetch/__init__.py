"""The fetch stage: sources → the raw layer (incremental plan, fetch history, parallel checked downloads)."""
