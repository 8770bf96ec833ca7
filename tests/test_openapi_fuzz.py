"""Property-based tests over /api/v1/openapi.json (schemathesis), as a platform admin and as a tenant admin:
no 5xx, no answer outside its documented schema or status codes. Bounded for CI (SCAIGRID_FUZZ_EXAMPLES)."""
import collections
import json
import os
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance, status_code_conformance

from conftest import bootstrap_key, launch

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = int(os.environ.get("SCAIGRID_FUZZ_EXAMPLES", "12"))
STATUS = {"platform-admin": collections.Counter(), "tenant-admin": collections.Counter()}


@pytest.fixture(scope="module")
def fuzz_target(database_url, tmp_path_factory):
    admin = bootstrap_key(database_url)
    graph = launch(REPO / "graph.yaml", tmp_path_factory.mktemp("fuzz"), env={"SCAIGRID_DATABASE_URL": database_url})
    headers = {"Authorization": f"Bearer {admin}"}

    def tenant_with_keys(name):
        tenant = httpx.post(graph.base_url + "/api/v1/tenants", json={"name": name}, headers=headers).json()
        keys = [httpx.post(f"{graph.base_url}/api/v1/tenants/{tenant['id']}/keys", json={"name": n, "role": r},
                           headers=headers).json() for n, r in (("admin", "tenant-admin"), ("spare", "member"))]
        return tenant, keys

    # the platform admin fuzzes against its own sandbox tenant, so disabling it hurts nobody else
    sandbox, (_, sandbox_spare) = tenant_with_keys("fuzz-platform-sandbox")
    tenant, (tenant_admin, tenant_spare) = tenant_with_keys("fuzz-tenant")
    graph.roles = {
        "platform-admin": (admin, {"tenant_id": sandbox["id"], "key_id": sandbox_spare["id"]}),
        "tenant-admin": (tenant_admin["key"], {"tenant_id": tenant["id"], "key_id": tenant_spare["id"]}),
    }
    yield graph
    graph.stop()


def schema_for(role):
    def load(fuzz_target):
        key, pinned = fuzz_target.roles[role]
        config = schemathesis.Config.from_dict({
            "headers": {"Authorization": f"Bearer {key}"},
            # real ids, so cases reach past the 404s; everything else is generated
            "parameters": {f"path.{name}": value for name, value in pinned.items()},
        })
        return schemathesis.openapi.from_url(f"{fuzz_target.base_url}/api/v1/openapi.json", config=config)
    return load


@pytest.fixture(scope="module")
def platform_schema(fuzz_target):
    return schema_for("platform-admin")(fuzz_target)


@pytest.fixture(scope="module")
def tenant_schema(fuzz_target):
    return schema_for("tenant-admin")(fuzz_target)


CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance]
as_platform = schemathesis.pytest.from_fixture("platform_schema")
as_tenant = schemathesis.pytest.from_fixture("tenant_schema")


@as_platform.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_as_platform_admin(case):
    response = case.call()
    STATUS["platform-admin"][response.status_code // 100 * 100] += 1
    case.validate_response(response, checks=CHECKS)


@as_tenant.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_as_tenant_admin(case):
    response = case.call()
    STATUS["tenant-admin"][response.status_code // 100 * 100] += 1
    case.validate_response(response, checks=CHECKS)


def test_zz_cases_reached_past_auth(capsys):
    with capsys.disabled():
        print("\nschemathesis status classes:", json.dumps({r: dict(c) for r, c in STATUS.items()}))
    for role, counts in STATUS.items():
        assert counts[200] > 0, f"no {role} case got a 2xx: {dict(counts)}"
        assert counts[500] == 0
