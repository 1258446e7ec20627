"""Command line interface (placeholder until the CLI lands)."""


def main() -> None:
    """Entry point of the ``camr`` console script."""
    raise SystemExit("camr: the command line is not built yet")
