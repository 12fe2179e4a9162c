"""The one exception type for bad user input."""


class UsageError(Exception):
    """Bad input: the CLI prints the message on one line and exits with code 2.

    The message says what is wrong and what to do about it.
    """


class RunStopped(Exception):
    """A run that cannot go on (a non-finite loss, say): one line, exit code 1, nothing lost."""
