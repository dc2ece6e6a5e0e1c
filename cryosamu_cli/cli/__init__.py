"""The ``cryosamu`` command line: a thin skin over the library functions."""
