"""The OpenAPI document, finished from the routes: problem media types and required permissions.

FastAPI documents every response under the route's media type; error responses are problem details,
so their content moves to ``application/problem+json``. Each protected operation gains an
``x-fleetguard-permission`` member and a sentence naming the permission and the roles that hold it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastapi.routing import APIRoute

from fleetguard.api.auth import permission_of
from fleetguard.api.problems import PROBLEM_MEDIA_TYPE
from fleetguard.api.tokens import ROLE_PERMISSIONS, Permission

__all__ = ["finish_document"]

PERMISSION_MEMBER = "x-fleetguard-permission"


def finish_document(document: dict[str, Any], routes: Iterable[APIRoute]) -> dict[str, Any]:
    """Annotate ``document`` (as FastAPI generated it) in place and return it."""
    for route in routes:
        if not route.include_in_schema:
            continue
        for method in route.methods or ():
            operation = document["paths"][route.path_format][method.lower()]
            _problem_media_types(operation)
            permission = permission_of(route)
            if permission is not None:
                _name_permission(operation, permission)
    return document


def _problem_media_types(operation: dict[str, Any]) -> None:
    # FastAPI files an error's schema under the route's own media type (JSON, CSV, PEM ...).
    for status, response in operation.get("responses", {}).items():
        content = response.get("content")
        if status.isdigit() and int(status) >= 400 and content:
            response["content"] = {PROBLEM_MEDIA_TYPE: next(iter(content.values()))}


def _name_permission(operation: dict[str, Any], permission: Permission) -> None:
    roles = ", ".join(role.value for role, granted in ROLE_PERMISSIONS.items() if permission in granted)
    sentence = f"Requires the `{permission.value}` permission (roles: {roles})."
    description = operation.get("description", "").rstrip()
    operation["description"] = f"{description}\n\n{sentence}" if description else sentence
    operation[PERMISSION_MEMBER] = permission.value
