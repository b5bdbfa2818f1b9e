"""Entry point of the ``umedpt-fl`` command: the ML core's commands plus the federation's."""

from __future__ import annotations

import client.cli  # noqa: F401  (registers `client`)
import server.cli  # noqa: F401  (registers `simulate` and `server`)
from umedpt.cli import app


def main() -> None:
    app()


if __name__ == "__main__":
    main()
