"""CLI subcommands. Each module defines ``register(subparsers)`` and sets ``run`` via set_defaults."""
