"""The `prefix-server` subcommands, one module each; each exposes register(subparsers)."""
