"""Identity's pure rules: the API key format (functions/shared/api_keys.py: what is well-formed, what is stored,
how a key is shown) and roles with tenant scoping (functions/shared/access.py: another tenant's things look like
nothing at all, list pages)."""
import hashlib
import re

import pytest

from scaigrid.functions.shared.access import (MEMBER, PLATFORM, TENANT_ADMIN, list_page, page_args, principal_of,
                                              require_manager, require_model, require_platform, visible_key)
from scaigrid.functions.shared.api_keys import KEY_RE, digest, lookup_of, masked, matches, mint
from scaigrid.runtime.errors import Forbidden, NotFound

A, B = "tenant-a", "tenant-b"


# API keys -----------------------------------------------------------------------------------------------------

def test_a_minted_key_is_well_formed_and_stored_only_as_its_hash():
    key, lookup, stored = mint()
    assert KEY_RE.match(key) and key.startswith(f"sg-{lookup}.")
    assert lookup_of(key) == lookup and re.fullmatch(r"[0-9a-f]{16}", lookup)
    assert stored == hashlib.sha256(key.encode()).hexdigest() == digest(key) and key not in stored
    assert matches(key, stored) and not matches(key + "x", stored)
    assert masked(lookup) == f"sg-{lookup}.****"  # how it is shown after creation: the lookup only
    assert mint()[1] != lookup


@pytest.mark.parametrize("key", [
    "", "sg-", "sk-0123456789abcdef." + "a" * 43,  # another prefix
    "sg-0123456789ABCDEF." + "a" * 43,  # upper-case lookup
    "sg-0123456789abcde." + "a" * 43,  # 15-character lookup
    "sg-0123456789abcdef" + "a" * 43,  # no dot
    "sg-0123456789abcdef." + "a" * 42, "sg-0123456789abcdef." + "a" * 44,  # secret of the wrong length
    "sg-0123456789abcdef." + "a" * 42 + "=",  # not URL-safe base64
    " sg-0123456789abcdef." + "a" * 43,
])
def test_malformed_keys_have_no_lookup(key):
    assert lookup_of(key) is None


def test_a_trailing_newline_is_not_well_formed():
    key, _, _ = mint()
    assert lookup_of(key + "\n") is None


# roles and tenants -----------------------------------------------------------------------------------------

def who(role: str, tenant: str = A) -> dict:
    return {"key_id": f"key-{role}", "tenant_id": tenant, "role": role}


def test_no_principal_runs_as_nobody():
    with pytest.raises(Forbidden) as info:
        principal_of({"id": "req_1", "principal": None})
    assert info.value.code == "not_authenticated"
    assert principal_of({"id": "req_1", "principal": who(MEMBER)})["request_id"] == "req_1"


@pytest.mark.parametrize("principal, tenant, error, code", [
    (who(PLATFORM, "platform"), B, None, None),
    (who(TENANT_ADMIN), A, None, None),
    (who(TENANT_ADMIN), B, NotFound, "tenant_not_found"),  # another tenant looks like no tenant
    (who(MEMBER), A, Forbidden, "tenant_admin_only"),
    (who(MEMBER), B, NotFound, "tenant_not_found"),  # not even that it exists
])
def test_who_manages_which_tenant(principal, tenant, error, code):
    if error is None:
        assert require_manager(principal, tenant) is None
        return
    with pytest.raises(error) as info:
        require_manager(principal, tenant)
    assert info.value.code == code


@pytest.mark.parametrize("role", [TENANT_ADMIN, MEMBER])
def test_platform_only(role):
    require_platform(who(PLATFORM))
    with pytest.raises(Forbidden) as info:
        require_platform(who(role))
    assert info.value.code == "platform_admin_only"


def test_another_tenant_s_key_looks_like_no_key():
    key = {"id": "k1", "tenant_id": B}
    assert visible_key(who(PLATFORM, "platform"), key, "k1") is key
    assert visible_key(who(MEMBER, B), key, "k1") is key
    for key_seen in (key, None):
        with pytest.raises(NotFound) as info:
            visible_key(who(TENANT_ADMIN), key_seen, "k1")
        assert (info.value.code, info.value.message) == ("key_not_found", "no key 'k1'")


@pytest.mark.parametrize("allowed, model, ok", [(None, "any", True), (["a"], "a", True), (["a"], None, True),
                                                (["a"], "b", False), ([], "a", False)])
def test_model_allow_lists(allowed, model, ok):
    if ok:
        require_model(allowed, model)
        return
    with pytest.raises(Forbidden) as info:
        require_model(allowed, model, param="embedding_model")
    assert (info.value.code, info.value.param) == ("model_not_allowed", "embedding_model")


def test_list_pages():
    items = [{"id": 1}, {"id": 2}]
    assert list_page(items, True) == {"object": "list", "data": items, "has_more": True, "next_after": "2"}
    assert list_page(items, False)["next_after"] is None and list_page([], True)["next_after"] is None
    assert page_args({"request": {}}) == (20, None)
    assert page_args({"request": {"query": {"limit": 5, "after": "x"}}}) == (5, "x")
