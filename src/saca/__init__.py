"""SACA: Step-Aware Contrastive Alignment for VLN-CE, and the VLN-R1 pipeline it builds on.

Every workflow rule calls this package as ``python -m saca <command> ...``.
"""

__version__ = "0.1.0"


class SacaError(Exception):
    """A user-facing error: bad input, missing file, misspelled key.

    The CLI prints the message (which names the file, field or key) and exits
    with status 2 instead of a traceback.
    """
