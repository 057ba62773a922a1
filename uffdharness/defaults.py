"""Defaults the scenario runner and the command line share.

This module imports nothing: every ``uffdharness`` start (each guest's included) builds the
whole parser, and the parser shows these values without importing the runner.
"""

DEFAULT_TIMEOUT = 30.0  # seconds per scenario x memory before the runner calls it a hang
