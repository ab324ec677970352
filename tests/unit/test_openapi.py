"""The OpenAPI document says what the gateway enforces (the schemathesis run checks the rest)."""

from __future__ import annotations

import re
from typing import Any

from gateway.bodies import DisplayName, UpdateProjectBody
from gateway.http import IDEMPOTENCY_KEY_PATTERN, IF_MATCH_PATTERN
from gateway.openapi import openapi_document
from gateway.routes import ENDPOINTS

DOC = openapi_document(ENDPOINTS)


def _op(path: str, method: str) -> dict[str, Any]:
    return DOC["paths"][path][method]


def _param(op: dict[str, Any], name: str) -> dict[str, Any]:
    return next(p for p in op["parameters"] if p["name"] == name)


def test_headers_have_the_patterns_that_are_enforced() -> None:
    op = _op("/v1/projects/{project_id}", "patch")
    assert _param(op, "If-Match")["schema"]["pattern"] == IF_MATCH_PATTERN
    assert _param(op, "Idempotency-Key")["schema"]["pattern"] == IDEMPOTENCY_KEY_PATTERN
    for value in ['"3"', "3", 'W/"3"', "*", ' "12" ']:
        assert re.match(IF_MATCH_PATTERN, value), value
    for value in ['"3', "3a", '"-1"', "yesterday", '"' + "9" * 19 + '"']:
        assert not re.match(IF_MATCH_PATTERN, value), value


def test_the_body_rules_nul_included_are_described() -> None:
    body = _op("/v1/projects/{project_id}/tasks", "post")["requestBody"]
    assert "NUL" in body["description"] and "surrogate" in body["description"] and "1e400" in body["description"]
    payload = DOC["components"]["schemas"]["SubmitTaskBody"]["properties"]["payload"]
    assert payload["additionalProperties"] == {"$ref": "#/components/schemas/JsonValue"}
    assert payload["propertyNames"]["pattern"] == "^[^\\x00]*$"


def test_patch_project_needs_a_field_and_null_is_no_value() -> None:
    schema = DOC["components"]["schemas"]["UpdateProjectBody"]
    assert schema["minProperties"] == 1 and schema["additionalProperties"] is False
    assert all("anyOf" not in p and "default" not in p and p["type"] == "string" for p in schema["properties"].values())
    assert UpdateProjectBody.model_validate({"description": ""}).model_fields_set == {"description"}


def test_display_name_length_is_checked_as_sent() -> None:
    schema = DOC["components"]["schemas"]["UpdateUserBody"]["properties"]["display_name"]
    assert schema["maxLength"] == 100 and re.search(schema["pattern"], " x ") and not re.search(schema["pattern"], "   ")
    assert DisplayName  # the edge type: checked as sent, then stripped


def test_required_and_optional_bodies() -> None:
    assert _op("/v1/users/{user_id}/role", "post")["requestBody"]["required"] is True
    assert _op("/v1/tasks/{task_id}/cancel", "post")["requestBody"]["required"] is False
    assert _op("/v1/users/{user_id}/deactivate", "post")["requestBody"]["required"] is False
    assert all(_op(e.path, e.method.lower())["requestBody"]["required"] for e in ENDPOINTS if e.body is not None and e.body_required)


def test_every_operation_lists_rate_limit_and_unavailable_answers() -> None:
    for endpoint in ENDPOINTS:
        responses = _op(endpoint.path, endpoint.method.lower())["responses"]
        assert {"429", "500", "503"} <= set(responses), endpoint.path
        assert responses["429"]["headers"]["Retry-After"]["required"] is True


def test_links_lead_from_created_ids_to_the_operations_that_take_them() -> None:
    links = _op("/v1/projects", "post")["responses"]["201"]["links"]
    assert links["submit_task"] == {"operationId": "submit_task", "parameters": {"path.project_id": "$response.body#/id"}}
    assert {"update_project", "archive_project", "put_member", "remove_member", "submit_task"} <= set(links)


def test_security_says_who_needs_a_token() -> None:
    assert _op("/v1/projects", "post")["security"] == [{"bearer": []}]
    assert _op("/v1/users", "post")["security"] == [{}, {"bearer": []}]  # admins may pass a role
    assert "security" not in _op("/v1/auth/token", "post")
