"""HTTP calls of the web targets, with statuses sorted into transient and permanent failures."""

import httpx

from executors.dispatch import TargetMisconfigured, TargetRefused, TargetUnavailable

_TRANSIENT_STATUSES = frozenset({408, 429})
_CONFIGURATION_STATUSES = frozenset({401, 403, 404})


def call(client: httpx.Client, method: str, url: str, **options: object) -> httpx.Response:
    """One request; 5xx, 408, 429 and network errors are transient, 401/403/404 point at the
    configuration, other 4xx are refusals."""
    try:
        response = client.request(method, url, **options)  # type: ignore[arg-type]
    except httpx.TransportError as error:
        raise TargetUnavailable(f"{url} unreachable: {error}") from error
    status = response.status_code
    if status >= 500 or status in _TRANSIENT_STATUSES:
        raise TargetUnavailable(f"{url} answered {status}")
    if status in _CONFIGURATION_STATUSES:
        raise TargetMisconfigured(f"{url} answered {status}: check the URL and credentials")
    if status >= 400:
        raise TargetRefused(f"{url} answered {status}: {response.text[:300]}")
    return response
