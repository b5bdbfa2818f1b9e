"""Benchmarks of the UMedPT core (throughput, memory, centralized pretraining); not shipped."""
