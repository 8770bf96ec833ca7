"""The native API's operations, keyed by graph.yaml route name: what each takes and answers (for the handler and
the OpenAPI document). A route with no entry here is served as plain JSON and documented as a free-form object."""
from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from . import native_schemas as s
from . import rag_schemas as r


@dataclass(frozen=True)
class Operation:
    summary: str
    tag: str
    response: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    status: int = 200
    public: bool = False  # served without an API key
    upload: bool = False  # also takes multipart/form-data: a `file` part and the body's other fields as parts


OPERATIONS: dict[str, Operation] = {
    "tenants_create": Operation("Create a tenant (platform admin)", "tenants", s.Tenant, body=s.TenantCreate,
                                status=201),
    "tenants_list": Operation("List tenants (platform admin)", "tenants", s.TenantList, query=s.Page),
    "tenants_get": Operation("Get a tenant", "tenants", s.Tenant),
    "tenants_disable": Operation("Disable a tenant: its keys stop working (platform admin)", "tenants", s.Tenant),
    "tenants_enable": Operation("Enable a tenant again (platform admin)", "tenants", s.Tenant),
    "keys_create": Operation("Create an API key; the key is shown once (tenant admin)", "keys", s.ApiKeyCreated,
                             body=s.KeyCreate, status=201),
    "keys_list": Operation("List a tenant's API keys (tenant admin)", "keys", s.ApiKeyList, query=s.Page),
    "keys_revoke": Operation("Revoke an API key (tenant admin)", "keys", s.ApiKey),
    "me": Operation("The calling key, its role and tenant", "identity", s.Principal),
    "audit_list": Operation("Audit log: who changed what, when", "audit", s.AuditList, query=s.AuditQuery),
    "models": Operation("Models this key may use", "models", s.ModelList),
    "usage": Operation("Usage and spend by tenant, key, model, day", "usage", s.UsageReport, query=s.UsageQuery),
    "tenant_limits_get": Operation("A tenant's limits and budgets, and its spend", "limits", s.Limits),
    "tenant_limits_set": Operation("Set a tenant's limits and budgets (platform admin)", "limits", s.Limits,
                                   body=s.LimitsBody),
    "key_limits_get": Operation("A key's limits and budgets, and its spend", "limits", s.Limits),
    "key_limits_set": Operation("Set a key's limits and budgets (tenant admin)", "limits", s.Limits,
                                body=s.LimitsBody),
    "plugins_create": Operation("Add a plugin to a tenant's chain (tenant admin)", "plugins", s.PluginOut,
                                body=s.PluginCreate, status=201),
    "plugins_list": Operation("A tenant's plugin chain, in order", "plugins", s.PluginList, query=s.PluginQuery),
    "plugins_update": Operation("Enable or disable a plugin", "plugins", s.PluginOut, body=s.PluginUpdate),
    "plugins_delete": Operation("Remove a plugin", "plugins", s.PluginOut),
    "plugins_kinds": Operation("Installed plugin kinds and their config schemas", "plugins", s.PluginKindList),
    "graph": Operation("The function graph as served", "system", s.GraphInfo),
    "collections_create": Operation("Create a collection; its embedding model is fixed (tenant admin)", "rag",
                                    r.Collection, body=r.CollectionCreate, status=201),
    "collections_list": Operation("The tenant's collections", "rag", r.CollectionList, query=s.Page),
    "collections_get": Operation("A collection, by id or name", "rag", r.Collection),
    "collections_delete": Operation("Delete a collection with its documents, chunks and graph (tenant admin)",
                                    "rag", r.Collection),
    "documents_create": Operation("Upload a document (text, Markdown, HTML, PDF; JSON or multipart); indexing runs "
                                  "as a job", "rag", r.Document, body=r.DocumentCreate, status=202, upload=True),
    "documents_list": Operation("A collection's documents and their ingestion status", "rag", r.DocumentList,
                                query=s.Page),
    "documents_get": Operation("A document and its ingestion status", "rag", r.Document),
    "documents_delete": Operation("Delete a document with its chunks and graph part", "rag", r.Document),
    "jobs_get": Operation("An ingestion job: status, stage, progress", "rag", r.Job),
    "collections_search": Operation("Search a collection (vector, keyword, hybrid, hybrid + knowledge graph)",
                                    "rag", r.SearchResult, query=r.SearchQuery),
    "collections_search_post": Operation("Search a collection, filters in the body", "rag", r.SearchResult,
                                         body=r.SearchBody),
}
