"""The one error type the CLI turns into a single line and a non-zero exit."""


class OrchError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""

    exit_code = 1
