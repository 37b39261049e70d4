"""The error types of the data stages: bad input, and an output path that must not be replaced."""


class DataError(ValueError):
    """Bad data input. The message names the parameter (``data.packing.seq_len``) or the file
    at fault, and, for unknown names, lists the known ones."""


class OutputError(DataError):
    """An output path that holds something this project did not write there (or a project, a git
    repository, the file system root, the home or the current directory); nothing was changed. The
    message names the path."""
