"""RFC 9457 problem responses and the exception handlers that produce them."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar

import httpx
import pytest
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from commands.errors import ValidationFailed
from gateway.auth import AuthError
from gateway.problems import (
    GENERIC_DETAIL,
    PROBLEM_MEDIA_TYPE,
    ProblemMiddleware,
    exception_handlers,
    field_errors,
    install_problem_handlers,
    internal_error,
    problem,
    validation_failed,
)


def body(response: Response) -> dict[str, Any]:
    assert response.media_type == PROBLEM_MEDIA_TYPE
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    data: dict[str, Any] = json.loads(bytes(response.body))
    return data


class Address(BaseModel):
    model_config = ConfigDict(extra="forbid")
    city: str


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    quantity: int


class Order(BaseModel):
    model_config = ConfigDict(extra="forbid")
    address: Address
    items: list[Item]


def order_error() -> ValidationError:
    with pytest.raises(ValidationError) as info:
        Order.model_validate(
            {"address": {"city": 5, "zip": "x"}, "items": [{"name": "a", "quantity": "many"}], "coupon": "FREE"}
        )
    return info.value


# --- building problems ---------------------------------------------------------------------


def test_problem_has_the_standard_members_and_media_type() -> None:
    response = problem(404, "Not Found", "no task 7", "task-not-found", task_id="7")
    assert response.status_code == 404
    assert body(response) == {
        "type": "https://taskstream.dev/problems/task-not-found",
        "title": "Not Found",
        "status": 404,
        "detail": "no task 7",
        "task_id": "7",
    }


def test_generic_problem_is_about_blank_and_omits_a_missing_detail() -> None:
    assert body(problem(400, "Bad Request")) == {"type": "about:blank", "title": "Bad Request", "status": 400}


def test_absolute_type_uri_is_kept() -> None:
    assert body(problem(400, "Bad", type_="urn:example:bad"))["type"] == "urn:example:bad"


def test_extensions_cannot_redefine_standard_members() -> None:
    with pytest.raises(TypeError, match="type"):
        extensions: dict[str, Any] = {"type": "x"}
        problem(400, "Bad", **extensions)


def test_field_errors_name_nested_fields_and_unknown_ones() -> None:
    errors = field_errors(order_error())
    by_field = {e["field"]: e for e in errors}
    assert by_field["address.city"]["type"] == "string_type"
    assert by_field["address.zip"]["type"] == "extra_forbidden"
    assert by_field["items.0.quantity"]["type"] == "int_parsing"
    assert by_field["coupon"]["type"] == "extra_forbidden"
    assert all(set(e) == {"field", "message", "type"} for e in errors)
    assert "FREE" not in json.dumps(errors)  # inputs are never echoed


def test_validation_failed_is_422_with_errors() -> None:
    response = validation_failed(order_error())
    data = body(response)
    assert response.status_code == 422
    assert data["type"] == "https://taskstream.dev/problems/validation-failed"
    assert data["title"] == ValidationFailed.title  # one title per problem type, whoever raises it
    assert {"field": "coupon", "message": "Extra inputs are not permitted", "type": "extra_forbidden"} in data["errors"]
    listed = validation_failed([{"field": "name", "message": "too long"}], "bad name")
    assert body(listed)["errors"] == [{"field": "name", "message": "too long"}]


def _subclasses(cls: type) -> list[type]:
    return [cls, *(sub for direct in cls.__subclasses__() for sub in _subclasses(direct))]


def test_each_problem_type_has_one_title() -> None:
    """Every error class the gateway can answer with, and the gateway's own validation answer."""
    import commands.errors
    import gateway.auth
    import gateway.http
    import gateway.ratelimit

    titles: dict[str, set[str]] = {}
    classes = _subclasses(commands.errors.DomainError)
    for module in (gateway.auth, gateway.http, gateway.ratelimit):
        classes += [c for c in vars(module).values() if isinstance(c, type) and isinstance(getattr(c, "slug", None), str)]
    for cls in classes:
        titles.setdefault(cls.slug, set()).add(cls.title)
    titles.setdefault("validation-failed", set()).add(body(validation_failed(order_error()))["title"])
    assert len(titles) > 10
    assert {slug: t for slug, t in titles.items() if len(t) > 1} == {}


def test_internal_error_is_generic_and_carries_the_trace_id() -> None:
    data = body(internal_error("abc123"))
    assert data == {
        "type": "about:blank",
        "title": "Internal Server Error",
        "status": 500,
        "detail": GENERIC_DETAIL,
        "trace_id": "abc123",
    }


# --- the handlers, end to end --------------------------------------------------------------


class TaskMissing(Exception):
    slug = "task-not-found"
    title = "No such task"
    status = 404

    def __init__(self, task_id: str) -> None:
        super().__init__(f"no task {task_id}")
        self.task_id = task_id

    def extensions(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "type": "ignored"}


class WrongVersion(Exception):
    """Like the commands' DomainError: ``detail`` and ``extensions`` as attributes."""

    slug: ClassVar[str] = "wrong-expected-version"
    title: ClassVar[str] = "Conflict"
    status: ClassVar[int] = 409

    def __init__(self) -> None:
        super().__init__("internal wording")
        self.detail = "task-1 is at version 5, not 3"
        self.extensions = {"expected_version": 3, "actual_version": 5}


class Throttled(Exception):
    slug = "rate-limited"
    title = "Too Many Requests"
    status = 429
    detail = "slow down"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "7"}


class BackendDown(Exception):
    slug = "store-unavailable"
    title = "Store unavailable"
    status = 503


class NotAProblem(Exception):
    slug = "looks-like-one"
    title = "But the status is not an HTTP error"
    status = 200


SECRET_TEXT = "password=hunter2 at db.internal:5432"


def raising(exc: Exception) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        raise exc

    return endpoint


async def validate(request: Request) -> Response:
    order = Order.model_validate_json(await request.body())
    return JSONResponse(order.model_dump())


async def read_body(request: Request) -> Response:
    return JSONResponse({"size": len(await request.body())})


class TraceIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope.setdefault("state", {})["trace_id"] = "0af7651916cd43dd8448eb211c80319c"
        await self.app(scope, receive, send)


class FailingMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/middleware-crash":
            raise RuntimeError(SECRET_TEXT)
        await self.app(scope, receive, send)


ROUTES = [
    Route("/http/{status:int}", raising(HTTPException(418))),
    Route("/teapot", raising(HTTPException(418, detail="short and stout"))),
    Route("/auth", raising(HTTPException(401))),
    Route("/task", raising(TaskMissing("t-1"))),
    Route("/conflict", raising(WrongVersion())),
    Route("/throttled", raising(Throttled())),
    Route("/backend", raising(BackendDown(SECRET_TEXT))),
    Route("/not-a-problem", raising(NotAProblem(SECRET_TEXT))),
    Route("/token", raising(AuthError("token expired"))),
    Route("/crash", raising(RuntimeError(SECRET_TEXT))),
    Route("/validate", validate, methods=["POST"]),
    Route("/body", read_body, methods=["POST"]),
]


class Client:
    """Requests straight to the ASGI app through httpx (starlette.testclient wants httpx2).

    Exceptions Starlette re-raises after answering (from middleware outside the routes) are
    not raised here, as a server would log them and carry on.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async with httpx.AsyncClient(transport=self.transport, base_url="http://testserver") as http:
            return await http.request(method, path, **kwargs)

    async def get(self, path: str) -> httpx.Response:
        return await self.request("GET", path)


@pytest.fixture(scope="module")
def client() -> Client:
    middleware = [Middleware(FailingMiddleware), Middleware(ProblemMiddleware)]
    return Client(Starlette(routes=ROUTES, exception_handlers=exception_handlers(), middleware=middleware))


def problem_of(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    data: dict[str, Any] = response.json()
    assert data["status"] == response.status_code
    return data


async def test_http_exception_keeps_its_status_and_uses_about_blank(client: Client) -> None:
    response = await client.get("/teapot")
    assert response.status_code == 418
    assert problem_of(response) == {
        "type": "about:blank",
        "title": "I'm a Teapot",
        "status": 418,
        "detail": "short and stout",
    }


async def test_unknown_route_and_wrong_method_are_problems(client: Client) -> None:
    missing = await client.get("/nowhere")
    assert missing.status_code == 404
    assert problem_of(missing) == {"type": "about:blank", "title": "Not Found", "status": 404, "detail": "no resource at /nowhere"}
    wrong_method = await client.request("DELETE", "/task")
    assert wrong_method.status_code == 405
    assert set(wrong_method.headers["allow"].split(", ")) == {"GET", "HEAD"}
    assert problem_of(wrong_method)["detail"] == "DELETE is not allowed on /task"


async def test_bare_401_gets_a_challenge(client: Client) -> None:
    response = await client.get("/auth")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


async def test_auth_error_becomes_401_with_its_reason(client: Client) -> None:
    response = await client.get("/token")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token", error_description="token expired"'
    assert problem_of(response)["detail"] == "token expired"


async def test_domain_error_with_extensions_method(client: Client) -> None:
    response = await client.get("/task")
    assert response.status_code == 404
    assert problem_of(response) == {
        "type": "https://taskstream.dev/problems/task-not-found",
        "title": "No such task",
        "status": 404,
        "detail": "no task t-1",
        "task_id": "t-1",
    }


async def test_domain_error_with_attributes_is_409_with_both_versions(client: Client) -> None:
    data = problem_of(await client.get("/conflict"))
    assert data["detail"] == "task-1 is at version 5, not 3"
    assert (data["expected_version"], data["actual_version"]) == (3, 5)


async def test_domain_error_headers_are_sent(client: Client) -> None:
    response = await client.get("/throttled")
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert problem_of(response)["detail"] == "slow down"


async def test_domain_5xx_hides_its_text_and_has_a_trace_id(client: Client, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="taskstream.gateway"):
        response = await client.get("/backend")
    data = problem_of(response)
    assert response.status_code == 503
    assert "detail" not in data and SECRET_TEXT not in response.text
    assert data["trace_id"] in caplog.text


async def test_validation_error_is_422(client: Client) -> None:
    order = b'{"address": {"city": "Oslo"}, "items": [], "extra": 1}'
    response = await client.request("POST", "/validate", content=order)
    assert response.status_code == 422
    assert problem_of(response)["errors"] == [
        {"field": "extra", "message": "Extra inputs are not permitted", "type": "extra_forbidden"}
    ]


@pytest.mark.parametrize("path", ["/crash", "/not-a-problem", "/middleware-crash"])
async def test_unexpected_error_is_a_generic_500_with_a_logged_trace_id(
    client: Client, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    with caplog.at_level(logging.ERROR, logger="taskstream.gateway"):
        response = await client.get(path)
    assert response.status_code == 500
    data = problem_of(response)
    assert data["detail"] == GENERIC_DETAIL
    assert SECRET_TEXT not in response.text and "Traceback" not in response.text
    assert len(data["trace_id"]) == 32
    records = [r for r in caplog.records if r.name == "taskstream.gateway"]
    assert records and all(getattr(r, "trace_id", None) == data["trace_id"] for r in records)
    assert data["trace_id"] in records[0].getMessage()
    assert records[0].exc_info is not None  # the stack trace goes to the log only


async def test_trace_id_from_request_state_is_used(caplog: pytest.LogCaptureFixture) -> None:
    app = Starlette(routes=ROUTES, middleware=[Middleware(TraceIdMiddleware)])
    install_problem_handlers(app)
    with caplog.at_level(logging.ERROR, logger="taskstream.gateway"):
        response = await Client(app).get("/crash")
    assert response.json()["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert "0af7651916cd43dd8448eb211c80319c" in caplog.text


async def test_streamed_body_over_the_limit_is_a_413_problem() -> None:
    # A declared Content-Length over the limit gets Starlette's own plain-text 413 whatever the
    # handlers; a body that grows past it mid-stream raises HTTPException(413), answered here.
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b"x" * 8

    app = Starlette(routes=ROUTES, max_body_size=8)
    install_problem_handlers(app)
    response = await Client(app).request("POST", "/body", content=chunks())
    assert response.status_code == 413
    assert problem_of(response)["title"] == "Content Too Large"
