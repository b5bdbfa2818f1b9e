"""The UMedPT model: a timm encoder, shared blocks per task type and tiny per-task heads."""
