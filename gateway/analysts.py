"""An analyst "may read the event streams and nothing else": the one place that says so.

``refuse_analysts`` runs in the gateway's dispatcher before every endpoint of the table (so an
endpoint added later is covered without saying anything): a request whose bearer token verifies
to the role ``analyst`` gets 403 unless the endpoint's path is under one of ``ANALYST_PATHS``
(the audit log, its live stream, the published schemas). Which categories an analyst may read
there is ``gateway.event_access``'s rule. A token that does not verify is left to the endpoint,
which answers 401 as it would for anyone. Verified tokens are cached by the verifier, so the
check costs a dictionary lookup.
"""

from __future__ import annotations

from starlette.requests import Request

from commands.errors import Forbidden
from gateway.auth import AuthError, SigningKeysUnavailable, TokenVerifier, bearer_principal

ANALYST_PATHS: tuple[str, ...] = ("/v1/events", "/v1/schemas")


def analysts_may_use(path: str) -> bool:
    """Whether the endpoint path template ``path`` is one an analyst may call."""
    return any(path == prefix or path.startswith(prefix + "/") for prefix in ANALYST_PATHS)


async def refuse_analysts(request: Request, path: str, verifier: TokenVerifier) -> None:
    """Forbidden (403) for an analyst's token on an endpoint outside ``ANALYST_PATHS``."""
    if "authorization" not in request.headers or analysts_may_use(path):
        return
    try:
        principal = await bearer_principal(request, verifier)
    except (AuthError, SigningKeysUnavailable):
        return  # the endpoint answers it as for anyone
    if principal.role == "analyst":
        raise Forbidden("an analyst may read the event streams (/v1/events, /v1/schemas) and nothing else")
