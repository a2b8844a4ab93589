"""CLI commands: evaluate."""


def register(sub) -> None:
    pass
