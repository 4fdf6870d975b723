"""``python -m huey.cli`` runs the ``huey`` command."""

from huey.cli import main

main()
