"""umedpt: the UMedPT multi-task model, data readers and constant-memory multi-task training.

This package is the ML core of umedpt-fl. It never imports Flower: the federated
client, server and strategies are thin layers over it.
"""

__version__ = "0.1.0"
