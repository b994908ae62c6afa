"""`python -m voicelane` runs the command-line interface."""

from voicelane.cli import main

raise SystemExit(main())
