"""The errors the CLI turns into a single line and a non-zero exit."""


class OrchError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""

    exit_code = 1


class BadInput(OrchError):
    """Input refused before any work starts (a name, a flag, a file that cannot be what it claims): exit 2."""

    exit_code = 2
