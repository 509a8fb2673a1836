"""The exception tree and exit codes: every error a user sees is one of these.

    BuildfanError            exit 1   base; never raised on its own
    ├── UserError            exit 2   bad matrix, bad pod template, unreachable cluster...
    └── BuildFailed          exit 1   at least one image failed to build

Interrupted runs (SIGINT/SIGTERM) exit 130 after teardown.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_BUILD_FAILED = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class BuildfanError(Exception):
    """Base class: a message for people and the exit code that goes with it."""

    exit_code = EXIT_BUILD_FAILED


class UserError(BuildfanError):
    """Bad input or environment: one line naming the file/key/resource and what to do."""

    exit_code = EXIT_USER_ERROR


class BuildFailed(BuildfanError):
    """One or more images failed to build."""

    exit_code = EXIT_BUILD_FAILED


class Interrupted(BuildfanError):
    """SIGINT or SIGTERM arrived; raised in the main thread so teardown runs."""

    exit_code = EXIT_INTERRUPTED
