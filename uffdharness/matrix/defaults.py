"""Defaults the `uffdharness` command line shows before the matrix package is needed.

Every `uffdharness` start builds the parser, in guests too, so this module imports nothing.
"""

# Seconds a guest may run before it counts as a hang. A full catalogue takes 20-30 s under
# TCG; a hung scenario costs its own --timeout (the runner kills it), so only a stuck guest
# kernel or interpreter reaches this.
DEFAULT_GUEST_TIMEOUT = 900.0
