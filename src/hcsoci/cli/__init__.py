"""The ``hcsoci`` command line."""
