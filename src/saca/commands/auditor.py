"""CLI commands: auditor."""


def register(sub) -> None:
    pass
