"""Performance benchmarks (speed, memory, bytes) of the core and the federation; not shipped."""
