"""``python -m doctor`` is the ``doctor`` command."""

from doctor.cli import main

main()
