"""CLI commands: policy."""


def register(sub) -> None:
    pass
