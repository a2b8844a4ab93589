"""CLI commands by topic; each module has ``register(subparsers)``."""
