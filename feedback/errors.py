"""Errors raised by the ``feedback`` package.

Every error the package raises on purpose derives from :class:`FlywheelError`, so a caller can
catch the whole family at a boundary. Errors from libraries (transformers, kafka-python, DuckDB)
are translated where they enter the package, with ``raise ... from exc``.

    FlywheelError
    ├── ConfigError               settings unreadable or invalid (names the field)
    ├── ModelError
    │   ├── ModelNotFoundError    the configured model path or package does not exist
    │   └── NotCausalLMError      the path exists but holds no causal language model
    ├── EventError
    │   ├── InvalidEventError     an event fails validation against its schema
    │   └── UnknownSchemaError    an event carries a schema version this build does not know
    ├── SignatureError            an interaction id whose HMAC signature does not verify
    ├── AccessError
    │   ├── NotAuthenticated      no API key, a malformed one, an unknown or a revoked one
    │   └── NotPermitted          a valid key whose role lacks the permission
    ├── KafkaUnavailableError     the Kafka cluster is unreachable or refused an admin request
    ├── WalError
    │   └── WalFullError          the write-ahead log reached its size bound
    ├── StoreError                DuckDB could not be opened or written
    ├── RegistryError             an adapter version is missing, incomplete or fails its hash
    ├── ContentFilterError        a term list or pattern cannot be read, or the classifier cannot load
    └── QueryError                an analyst query in the sandbox
        ├── QueryRefused          not a single SELECT, or it reaches outside the lake or its role
        ├── QueryFailed           allowed, but DuckDB could not run it
        └── QueryTimeout          ran past its time limit and was killed
"""

from __future__ import annotations


class FlywheelError(Exception):
    """Base of every error the flywheel packages raise on purpose."""


class ConfigError(FlywheelError):
    """Settings could not be read or failed validation."""


class ModelError(FlywheelError):
    """A model could not be found, converted or loaded."""


class ModelNotFoundError(ModelError):
    """The configured model path, file or package does not exist."""


class NotCausalLMError(ModelError):
    """The configured path exists but does not hold a causal language model."""


class EventError(FlywheelError):
    """An event could not be decoded or validated."""


class InvalidEventError(EventError):
    """An event does not match its schema."""


class UnknownSchemaError(EventError):
    """An event carries a schema version this build does not know."""


class SignatureError(FlywheelError):
    """A signed interaction id failed verification."""


class AccessError(FlywheelError):
    """A request that may not do what it asks."""


class NotAuthenticated(AccessError):
    """No API key, a malformed one, or one that is unknown or revoked (HTTP 401)."""


class NotPermitted(AccessError):
    """A valid API key whose role lacks the permission (HTTP 403)."""


class KafkaUnavailableError(FlywheelError):
    """The Kafka cluster could not be reached or refused an administrative request."""


class WalError(FlywheelError):
    """The write-ahead log could not be written or read."""


class WalFullError(WalError):
    """The write-ahead log reached its configured size bound."""


class StoreError(FlywheelError):
    """The DuckDB store could not be opened, migrated or written."""


class RegistryError(FlywheelError):
    """An adapter version is missing, incomplete, or its bytes do not match its name."""


class ContentFilterError(FlywheelError):
    """The content filter cannot be built: an unreadable term list, a bad pattern, a classifier that fails to load."""


class QueryError(FlywheelError):
    """An analyst query was refused, failed, or ran out of time or memory."""


class QueryRefused(QueryError):
    """The query is not allowed (not a single SELECT, or it reaches outside the lake or its role)."""


class QueryFailed(QueryError):
    """The query is allowed but DuckDB could not run it (a syntax or name error, out of memory)."""


class QueryTimeout(QueryError):
    """The query ran longer than the limit and its process was killed."""
