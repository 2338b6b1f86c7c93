"""The one exception type the CLI turns into an exit code."""

from __future__ import annotations

EXIT_OK = 0
EXIT_CHECK_FAILED = 1  # a gate or a `train --check` threshold failed
EXIT_BAD_INPUT = 2  # bad usage or bad input; the message names the file, column or row


class LabelkitError(ValueError):
    """An error meant for the user: one line, no traceback, a documented exit code.

    A ``ValueError``, as scikit-learn's parameter errors are, so library callers who already catch
    bad-value errors catch labelkit's too.
    """

    def __init__(self, message: str, exit_code: int = EXIT_BAD_INPUT):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def parameter_error(name: str, func: str, expected: str, got: object) -> LabelkitError:
    """Return the scikit-learn shaped error for a bad parameter value.

    >>> str(parameter_error("k", "find_duplicates", "an int in the range [1, inf)", 0))
    "The 'k' parameter of find_duplicates must be an int in the range [1, inf). Got 0 instead."
    """
    return LabelkitError(f"The {name!r} parameter of {func} must be {expected}. Got {got!r} instead.")


def check_in_range(value, name: str, func: str, *, low=None, high=None,
                   low_closed: bool = True, high_closed: bool = True, kind: str = "a number"):
    """Return `value` if it lies in the interval, else raise the scikit-learn shaped error."""
    ok = True
    if low is not None:
        ok &= value >= low if low_closed else value > low
    if high is not None:
        ok &= value <= high if high_closed else value < high
    if not ok:
        lo = "(-inf" if low is None else ("[" if low_closed else "(") + f"{low}"
        hi = "inf)" if high is None else f"{high}" + ("]" if high_closed else ")")
        raise parameter_error(name, func, f"{kind} in the range {lo}, {hi}", value)
    return value
