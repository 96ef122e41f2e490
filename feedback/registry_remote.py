"""Adapter versions over HTTP: what the worker serves, and how a gateway on another machine fetches them.

The worker answers ``GET /v1/registry/{version}`` with a :class:`VersionManifest` (each content file's
name, size and SHA-256) and ``GET /v1/registry/{version}/{name}`` with a file's bytes, for a key of a
role holding the ``models`` permission. :class:`RemoteRegistry` is the gateway's side: it downloads
the files named in :data:`~feedback.registry.CONTENT_FILES` (never a name the server chose), checks
each one's size and SHA-256 as it streams, and :meth:`~feedback.registry.AdapterRegistry.fetch`
installs the version only if the files hash to its name. The worker serves the bytes as stored; the
gateway trusts nothing but the content hash.

Connection failures and timeouts (and a 502, 503 or 504) are retried ``retries`` times with a
doubling pause; every other failure, and httpx's own errors, become a :class:`RegistryError`.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

from feedback.errors import RegistryError
from feedback.registry import CONTENT_FILES, AdapterRegistry
from feedback.settings import ModelSettings

_RETRIED_STATUSES = frozenset({502, 503, 504})  # a proxy or a restarting worker: worth another try
_FIRST_PAUSE_S = 0.5  # pause before the first retry; doubled before each next one, seconds
_CHUNK = 1 << 20  # bytes read from the response at a time

T = TypeVar("T")


class VersionFile(BaseModel):
    """One content file of an adapter version."""

    model_config = ConfigDict(extra="forbid")

    name: str  # one of the registry's content file names
    size: int  # bytes
    sha256: str  # hex digest of the bytes


class VersionManifest(BaseModel):
    """``GET /v1/registry/{version}``: the files a gateway downloads to install ``version``."""

    model_config = ConfigDict(extra="forbid")

    version: str
    files: list[VersionFile]


def version_manifest(registry: AdapterRegistry, version: str) -> VersionManifest:
    """The content files of a stored ``version`` as they are on disk (RegistryError if it is not stored)."""
    path = registry.root / version
    if not path.is_dir() or not all((path / name).is_file() for name in CONTENT_FILES):
        raise RegistryError(f"adapter version {version!r} is not in the registry")
    return VersionManifest(version=version, files=[_describe(path / name) for name in CONTENT_FILES])


def _describe(path: Path) -> VersionFile:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return VersionFile(name=path.name, size=path.stat().st_size, sha256=digest.hexdigest())


class RemoteRegistry:
    """The registry endpoint of a worker at ``url``, read with the API key ``key`` (a :class:`RemoteSource`)."""

    def __init__(self, url: str, key: str | None, *, timeout_s: float = 30.0, retries: int = 3) -> None:
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._timeout = httpx.Timeout(timeout_s)
        self._retries = retries

    def download(self, version: str, into: Path) -> None:
        """Write the content files of ``version`` into ``into``, each checked against the server's manifest."""
        with httpx.Client(base_url=self.url, headers=self._headers, timeout=self._timeout) as client:
            manifest = self._manifest(client, version)
            listed = {file.name: file for file in manifest.files}
            for name in CONTENT_FILES:
                if name not in listed:
                    raise RegistryError(f"the registry at {self.url} lists no {name} for adapter version {version!r}")
                self._attempt(functools.partial(self._download_file, client, version, listed[name], into / name))

    def _manifest(self, client: httpx.Client, version: str) -> VersionManifest:
        def ask() -> VersionManifest:
            with self._get(client, version, f"/v1/registry/{version}") as response:
                response.read()
            try:
                manifest = VersionManifest.model_validate_json(response.content)
            except ValidationError as exc:
                raise RegistryError(f"the registry at {self.url} sent no valid manifest of {version!r}") from exc
            if manifest.version != version:
                raise RegistryError(f"the registry at {self.url} answered for {manifest.version!r}, not {version!r}")
            return manifest

        return self._attempt(ask)

    def _download_file(self, client: httpx.Client, version: str, expected: VersionFile, target: Path) -> None:
        digest, size = hashlib.sha256(), 0
        url = f"/v1/registry/{version}/{expected.name}"
        with self._get(client, version, url) as response, target.open("wb") as handle:
            for chunk in response.iter_bytes(_CHUNK):
                size += len(chunk)
                if size > expected.size:  # never write more than the manifest announced
                    break
                digest.update(chunk)
                handle.write(chunk)
        if size != expected.size or digest.hexdigest() != expected.sha256:
            raise RegistryError(
                f"{expected.name} of adapter version {version!r} from {self.url} does not match its manifest: "
                f"{size} bytes, SHA-256 {digest.hexdigest()}; expected {expected.size} bytes, {expected.sha256}"
            )

    @contextmanager
    def _get(self, client: httpx.Client, version: str, path: str) -> Iterator[httpx.Response]:
        with client.stream("GET", path) as response:
            if response.status_code != 200:
                response.read()
                raise _refusal(self.url, version, response)
            yield response

    def _attempt(self, call: Callable[[], T]) -> T:
        """``call()``, retried after connection failures and retried statuses; httpx errors become RegistryError."""
        pause = _FIRST_PAUSE_S
        for attempt in range(self._retries + 1):
            try:
                return call()
            except (httpx.TransportError, _Retry) as exc:
                if attempt == self._retries:
                    raise RegistryError(
                        f"the registry at {self.url} failed {attempt + 1} times, the last with: {exc}"
                    ) from exc
            except httpx.HTTPError as exc:
                raise RegistryError(f"the registry at {self.url} could not be read: {exc}") from exc
            time.sleep(pause)
            pause *= 2
        raise AssertionError("unreachable")  # the loop returns or raises


class _Retry(Exception):
    """A status worth another try (502, 503, 504)."""


def _refusal(url: str, version: str, response: httpx.Response) -> Exception:
    try:
        body = response.json()
    except ValueError:
        body = None
    detail = str(body["detail"]) if isinstance(body, dict) and "detail" in body else response.text
    if response.status_code in _RETRIED_STATUSES:
        return _Retry(f"HTTP {response.status_code}: {detail}")
    if response.status_code == 404:
        return RegistryError(f"adapter version {version!r} is not in the registry at {url}: {detail}")
    if response.status_code in (401, 403):
        return RegistryError(
            f"the registry at {url} refused the key (HTTP {response.status_code}: {detail}); "
            "model.registry_key must be a developer's or an admin's API key"
        )
    return RegistryError(f"the registry at {url} answered HTTP {response.status_code} for {version!r}: {detail}")


def open_registry(model: ModelSettings) -> AdapterRegistry:
    """The registry in ``model.registry_dir``, fetching missing versions from ``model.registry_url`` when set."""
    if model.registry_url is None:
        return AdapterRegistry(model.registry_dir)
    key = model.registry_key.get_secret_value() if model.registry_key is not None else None
    remote = RemoteRegistry(model.registry_url, key, timeout_s=model.registry_timeout_s, retries=model.registry_retries)
    return AdapterRegistry(model.registry_dir, remote)
