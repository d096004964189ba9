"""One module per `saelab` subcommand; each exposes `register(subparsers)`."""
