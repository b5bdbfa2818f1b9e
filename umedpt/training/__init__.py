"""UMedPT's constant-memory multi-task loop, reusable by a federated client."""
