"""The one error type of the data stages."""


class DataError(ValueError):
    """Bad data input. The message names the parameter (``data.packing.seq_len``) or the file
    at fault, and, for unknown names, lists the known ones."""
