"""Exceptions raised by tracerl.

Every failure a user can cause has its own subclass of :class:`TracerlError`, and its message names the
bad value and how to fix it. The HTTP server maps each class to a status code through ``http_status`` and
renders it as ``{"error": {"type": <class name>, "message": <text>}}``; the HTTP client maps it back, so
the same exception class reaches the caller whichever store backend it talks to.
"""

from __future__ import annotations


class TracerlError(Exception):
    """Root of every error tracerl raises on purpose.

    ``client_message``, when set, is what the server sends its HTTP clients instead of ``str(self)``: the
    full message names things they must not learn (a database's host, user, database or schema) and goes
    to the server's log instead. In-process callers always see the full message.
    """

    http_status: int = 500
    client_message: str | None = None

    def for_client(self, message: str) -> TracerlError:
        """Set :attr:`client_message` to ``message``; returns ``self`` (``raise err.for_client(...)``)."""
        self.client_message = message
        return self


class ConfigError(TracerlError):
    """A configuration value is invalid or two values cannot be combined."""

    http_status = 400


class InvalidInput(TracerlError):
    """A request or argument has the wrong shape, type or range."""

    http_status = 400


class NotFound(TracerlError):
    """An id (rollout, attempt, resource) does not exist in the store."""

    http_status = 404


class IllegalTransition(TracerlError):
    """A status change that the rollout/attempt status machine does not allow."""

    http_status = 409


class AttemptFinished(IllegalTransition):
    """The attempt is already finished (or was expired): its lease cannot be extended or used."""


class Conflict(TracerlError):
    """A write conflicts with what is stored (immutable resource, different experiment, ...)."""

    http_status = 409


class ExperimentConflict(Conflict):
    """The store is already bound to a different experiment name."""


class PayloadTooLarge(InvalidInput):
    """A request body is over the server's size limit."""

    http_status = 413


class Unauthorized(TracerlError):
    """A request to the server had no bearer token or a wrong one."""

    http_status = 401


class StoreUnavailable(TracerlError):
    """The store backend cannot be reached (database down, server not running)."""

    http_status = 503


class Timeout(TracerlError):
    """Waiting for something (rollouts to finish, a claim) ran past its deadline."""

    http_status = 504


class ServerError(TracerlError):
    """The server failed on a request for a reason that is not the client's fault."""

    http_status = 500


ERRORS_BY_NAME: dict[str, type[TracerlError]] = {
    cls.__name__: cls
    for cls in (
        TracerlError,
        ConfigError,
        InvalidInput,
        NotFound,
        IllegalTransition,
        AttemptFinished,
        Conflict,
        ExperimentConflict,
        PayloadTooLarge,
        Unauthorized,
        StoreUnavailable,
        Timeout,
        ServerError,
    )
}
