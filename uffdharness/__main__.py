"""``python -m uffdharness``: the command line."""

from uffdharness.cli import main

raise SystemExit(main())
