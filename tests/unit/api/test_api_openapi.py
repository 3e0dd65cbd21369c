"""The OpenAPI document is complete: every operation is described, names its security and
permission, and documents its errors as problem details."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from fleetguard import __version__
from fleetguard.api.app import api_routes
from fleetguard.api.auth import PUBLIC_PATHS
from fleetguard.api.tokens import Permission

if TYPE_CHECKING:
    from conftest import Api

_METHODS = {"get", "post", "put", "patch", "delete"}


@pytest.fixture
def document(api: Api) -> dict[str, Any]:
    response = api.client.get("/openapi.json")
    assert response.status_code == 200
    result: dict[str, Any] = response.json()
    return result


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in _METHODS
    ]


def test_document_names_the_service(document: dict[str, Any]) -> None:
    assert document["info"]["title"] == "fleetguard"
    assert document["info"]["version"] == __version__
    assert "problem details" in document["info"]["description"]
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_document_covers_every_route(document: dict[str, Any]) -> None:
    documented = {(method.upper(), path) for method, path, _ in _operations(document)}
    # path_format: the document names a path parameter without its converter ({url}, not {url:path}).
    served = {(method, route.path_format) for route in api_routes() for method in route.methods or ()}
    assert documented == served - {(m, p) for m, p in served if m == "HEAD"}


def test_every_operation_has_a_summary_and_a_description(document: dict[str, Any]) -> None:
    for method, path, operation in _operations(document):
        assert operation.get("summary"), (method, path)
        assert len(operation.get("description", "")) > 20, (method, path)


def test_protected_operations_declare_security_permission_and_auth_problems(document: dict[str, Any]) -> None:
    for method, path, operation in _operations(document):
        if path in PUBLIC_PATHS:
            assert "security" not in operation, path
            continue
        assert operation["security"] == [{"bearer": []}], (method, path)
        permission = Permission(operation["x-fleetguard-permission"])
        assert f"`{permission.value}`" in operation["description"]
        for status in ("401", "403", "422", "503"):
            content = operation["responses"][status]["content"]
            assert content == {
                "application/problem+json": {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}
            }


@pytest.mark.parametrize(
    ("method", "path", "statuses"),
    [
        ("post", "/v1/devices", {"201", "409", "413"}),
        ("get", "/v1/devices/{device_id}", {"200", "404"}),
        ("patch", "/v1/devices/{device_id}", {"200", "404", "409", "413", "428"}),
        ("post", "/v1/devices/{device_id}/transitions", {"200", "404", "409"}),
        ("post", "/v1/devices/import", {"200", "413", "415"}),
    ],
)
def test_operations_document_their_own_problems(
    document: dict[str, Any], method: str, path: str, statuses: set[str]
) -> None:
    assert statuses <= set(document["paths"][path][method]["responses"])


def test_import_documents_both_body_media_types(document: dict[str, Any]) -> None:
    body = document["paths"]["/v1/devices/import"]["post"]["requestBody"]
    assert set(body["content"]) == {"text/csv", "application/json"}


def test_no_framework_validation_error_shape_leaks_in(document: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in document["components"]["schemas"]
    assert set(document["components"]["schemas"]["ProblemDetails"]["required"]) >= {"type", "status"}


def test_docs_are_served(api: Api) -> None:
    response = api.client.get("/docs")
    assert response.status_code == 200
    assert "/openapi.json" in response.text
