"""The mutation suite: small kernel patches that each break one thing the catalogue checks.

``suite`` reads the manifest (which scenarios must catch which mutation), ``compare``
judges a mutated kernel's verdicts against the unpatched base's, ``table`` prints and
serialises the outcome. ``uffdharness mutations`` (cli/mutations.py) builds and boots
every mutated kernel through the matrix.
"""
