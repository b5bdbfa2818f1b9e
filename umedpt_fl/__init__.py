"""The ``umedpt-fl`` command: the ML core's commands plus the federation's."""
