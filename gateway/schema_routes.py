"""``GET /v1/schemas``: the published JSON Schemas of the events (``schemas/published``), the
analysts' contract, for whoever may read event streams (``gateway.event_access``: admins all
categories, analysts the ones they may read; others 403).

The files are read once, on the first request (no I/O at import), and served as they are in
the repository, so what a client downloads is what ``python -m schemas.jsonschema --check``
holds up to date. Every version ever published is served: ``/v1/schemas/{type}/{version}``.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from commands.authz import Actor
from commands.errors import NotFound
from gateway.auth import Principal, bearer_principal
from gateway.event_access import readable_categories
from gateway.reads import _caller
from gateway.routes import Deps, Endpoint
from gateway.views_audit import JsonSchema, SchemaIndex
from schemas.jsonschema import INDEX, PUBLISHED_DIR

EVENT_TYPE_PATTERN = r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$"
_VERSION = re.compile(r"^[1-9][0-9]{0,5}$")


@lru_cache(maxsize=1)
def _published(folder: Path = PUBLISHED_DIR) -> tuple[list[dict[str, Any]], dict[tuple[str, int], bytes]]:
    index = json.loads((folder / INDEX).read_text(encoding="utf-8"))["schemas"]
    files = {(item["type"], item["schema_version"]): (folder / item["file"]).read_bytes() for item in index}
    return index, files


async def _readable(request: Request, deps: Deps) -> frozenset[str]:
    principal = await bearer_principal(request, deps.verifier)
    if deps.reads is not None:  # the role as stored (a demotion binds existing tokens; deactivated: 403)
        caller = await _caller(Actor(principal.subject, principal.role), deps.reads, fresh=False)
        principal = Principal(principal.subject, caller.role, principal.claims)  # type: ignore[arg-type]
    return readable_categories(principal)


async def schema_index(request: Request, deps: Deps) -> Response:
    readable = await _readable(request, deps)
    index, _ = _published()
    items = [
        {"type": i["type"], "schema_version": i["schema_version"], "current": i["current"], "category": i["category"],
         "url": f"/v1/schemas/{i['type']}/{i['schema_version']}"}
        for i in index if i["category"] in readable
    ]  # fmt: skip
    return JSONResponse({"items": items}, headers={"Cache-Control": "private, max-age=60"})


async def schema_document(request: Request, deps: Deps) -> Response:
    readable = await _readable(request, deps)
    type_, raw_version = request.path_params["event_type"], request.path_params["schema_version"]
    _, files = _published()
    body = files.get((type_, int(raw_version))) if _VERSION.match(raw_version) else None
    if body is None or type_.partition(".")[0] not in readable:
        raise NotFound("no published schema of that type and version")
    return Response(body, media_type="application/json", headers={"Cache-Control": "private, max-age=300"})


SCHEMA_ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", "/v1/schemas", schema_index, "The published JSON Schemas of the events, every version (admins, analysts)",
             status=200, errors=(401, 403), response=SchemaIndex),
    Endpoint("GET", "/v1/schemas/{event_type}/{schema_version}", schema_document, "One event type's JSON Schema at one version",
             status=200, errors=(401, 403, 404), response=JsonSchema),
)  # fmt: skip
