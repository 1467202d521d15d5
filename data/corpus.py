"""Parallel corpora -> datasets. (Being written: see the data helper.)"""


class DataError(Exception):
    """A corpus or data file that cannot be used; the message names the file and the problem."""
