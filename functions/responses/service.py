"""The responses function: a /v1/responses request's history before the model, its answer as a response object
(kept unless `store: false`) after it, and the stored responses read and deleted by their own tenant."""
from __future__ import annotations

import re
import time

from nameko.rpc import rpc

from scaigrid.adapters.sql.response_store import ResponseStore
from scaigrid.runtime.errors import NotFound

from ..shared.chunks import added_fields
from ..shared.response_objects import response_object
from ..shared.response_output import as_chat, gather, items, new_output


ID = re.compile(r"resp_[0-9a-f]{32}")  # response_id(): ours, so anything else is unknown without a query


def _not_found(rid: str, param: str | None = None) -> NotFound:
    # another tenant's response is as unknown as one never made: a key cannot probe ids
    return NotFound(f"response with id '{rid[:80]}' not found", code="response_not_found", param=param)


class Responses:
    """recall (before admission: the history counts against the limits) and keep (after plugins.after) run inline
    on the responses route; on_chunk keeps a streamed one at its end."""

    name = "responses"
    stores = ("postgres",)
    store = ResponseStore()

    @rpc
    def recall(self, envelope: dict) -> dict:
        """A previous response's conversation, put in front of this request's input (after its instructions)."""
        request = envelope["request"]
        meta = {**request["responses"], "created_at": int(time.time()),
                "key_id": (envelope.get("principal") or {}).get("key_id")}
        history: list[dict] = []
        previous_id = meta.get("previous_response_id")
        if previous_id:
            found = self.store.conversation(previous_id, envelope["tenant"]) if ID.fullmatch(previous_id) else None
            if found is None:
                raise _not_found(previous_id, "previous_response_id")
            conversation, previous = found
            history = [*conversation, *as_chat(previous.get("output") or [])]
            body = request["body"]
            first = 1 if meta.get("instructions") is not None else 0
            body["messages"] = body["messages"][:first] + history + body["messages"][first:]
        meta["conversation"] = history + meta.pop("input_messages")
        envelope["context"]["responses"] = meta
        return envelope

    def _keep(self, tenant_id: str, meta: dict, response: dict) -> None:
        if meta.get("store", True):
            self.store.keep(response["id"], tenant_id, meta.get("key_id"), meta["model"], meta["conversation"],
                            response)

    @rpc
    def keep(self, envelope: dict) -> dict:
        """The chat answer as the response object, stored unless store: false. A stream is kept by on_chunk."""
        if envelope["context"].get("stream") or envelope.get("response") is None:
            return envelope
        meta, answer = envelope["context"]["responses"], envelope["response"]
        output = new_output()
        gather(output, answer)
        response = {**response_object(envelope["id"], meta, "completed", items(envelope["id"], output),
                                      output["finish"], envelope.get("usage") or answer.get("usage")),
                    **added_fields(answer), **(envelope["context"].get("answer_fields") or {})}
        self._keep(envelope["tenant"], meta, response)
        envelope["response"] = response
        return envelope

    @rpc
    def on_chunk(self, chunk: dict) -> dict:
        """A streamed chunk, passed on as is; its text (as the client gets it: after the chunk steps before this
        one) is gathered, and on the final call the response is kept, before the stream's last event."""
        meta, data = chunk["context"]["responses"], chunk.get("data")
        streamed = meta.get("streamed")
        if streamed is None:  # the first chunk: it carries what steps added to the answer (rag's citations)
            streamed = meta["streamed"] = {"output": new_output(), "added": added_fields(data)}
        gather(streamed["output"], data)
        if chunk.get("final"):
            output = streamed["output"]
            response = {**response_object(chunk["id"], meta, "completed", items(chunk["id"], output),
                                          output["finish"], chunk.get("usage")), **streamed["added"]}
            self._keep(chunk["tenant"], meta, response)
        chunk["emit"] = [data] if data is not None else []
        return chunk

    @rpc
    def get(self, envelope: dict) -> dict:
        """GET /v1/responses/{response_id}: the tenant's own stored response."""
        rid = envelope["request"]["path"]["response_id"]
        found = self.store.response(rid, envelope["tenant"]) if ID.fullmatch(rid) else None
        if found is None:
            raise _not_found(rid)
        envelope["response"] = found
        return envelope

    @rpc
    def delete(self, envelope: dict) -> dict:
        """DELETE /v1/responses/{response_id}."""
        rid = envelope["request"]["path"]["response_id"]
        if not (ID.fullmatch(rid) and self.store.delete(rid, envelope["tenant"])):
            raise _not_found(rid)
        envelope["response"] = {"id": rid, "object": "response", "deleted": True}
        return envelope
