"""Entry point of the ``umedpt-fl`` command."""

from __future__ import annotations

from umedpt.cli import app


def main() -> None:
    app()


if __name__ == "__main__":
    main()
