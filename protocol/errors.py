"""The error types both Jobs raise, each tied to one exit code (DESIGN.md "Exit codes").

0 done; 2 invalid input or configuration (the chart's podFailurePolicy fails the Job at
once, no retry); 3 the other side failed or timed out; 1 anything else (retried).
"""

EXIT_OK = 0
EXIT_OTHER = 1
EXIT_INVALID = 2
EXIT_PEER = 3


class InvalidInput(Exception):
    """Bad input or configuration: retrying cannot help. Exit code 2."""

    exit_code = EXIT_INVALID


class MessageError(InvalidInput):
    """A protocol message (or one of its fields) is not what the contract says."""

    def __init__(self, source: str, field: str | None, expected: str, got: object = None):
        self.source, self.field, self.expected = source, field, expected
        where = f"{source}: field '{field}'" if field else source
        detail = f", got {got!r}" if got is not None else ""
        super().__init__(f"{where}: expected {expected}{detail}")


class ForeignRun(InvalidInput):
    """A document of another run, or of this run with other settings, in this run directory: using
    it would mix two runs. One wording wherever that is found (storage.publish_or_match, a message's
    run_id, a checkpoint's model); `differences` names each, as messages.describe_differences does."""

    def __init__(self, source: str, differences: str):
        super().__init__(f"{source} is of another run or of different settings ({differences}): resume with "
                         f"the same settings, or use a new --data-dir")


class PermissionDenied(InvalidInput):
    """The bucket refused a write (HTTP 403) past --permission-wait: IAM, not a passing fault."""


class CorruptData(InvalidInput):
    """A part whose size, checksum or layout does not match what its ready.json lists."""


class AlreadyPublished(FileExistsError):
    """publish_once found the name taken: somebody published it first."""


class PeerError(Exception):
    """The other Job failed, went silent, or never appeared. Exit code 3."""

    exit_code = EXIT_PEER


class PeerFailedFinally(PeerError):
    """The other Job failed on invalid input (its exit code 2, never retried): so does this one."""

    exit_code = EXIT_INVALID

    def __init__(self, side: str, code: int | None, cause: str | None):
        super().__init__(f"the {side} failed with exit code {code} (invalid input; it will not be retried): "
                         f"{cause or 'no message'}")


class BucketUnavailable(Exception):
    """The bucket kept failing with transient errors past the deadline. The message names the URL
    and the last error. Exit code 3 when a poll for the other side's files gave up, else 1."""

    def __init__(self, message: str, exit_code: int = EXIT_OTHER):
        super().__init__(message)
        self.exit_code = exit_code


class WaitTimeout(PeerError):
    """Waited for a file longer than allowed; the message names what and for how long."""


def first_line(error: BaseException, limit: int | None = 300) -> str:
    """An error as one log or status line: its message's first line (or its type's name)."""
    return (str(error).strip() or type(error).__name__).splitlines()[0][:limit]


def describe_error(error: BaseException, limit: int | None = 300) -> str:
    """An error as one line that names its type: "HttpError: backend error, 503"."""
    return f"{type(error).__name__}: {first_line(error, limit)}"


def exit_code_for(error: BaseException) -> int:
    return getattr(error, "exit_code", EXIT_OTHER)
