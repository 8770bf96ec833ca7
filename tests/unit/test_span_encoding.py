"""runtime/span_encoding.py against the SDK's own OTLP encoder: the same records give the same export, field by
field (the exporter process sends ours; the SDK's is the reference)."""
import pytest
from google.protobuf.json_format import MessageToDict
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits

from scaigrid.runtime.span_encoding import Encoder, sdk_spans
from scaigrid.runtime.span_recorder import clean

pytestmark = pytest.mark.unit

TRACE, SPAN, PARENT, LINKED = 0x0AF7651916CD43DD8448EB211C80319C, 0x00F067AA0BA902B7, 0x53995C3F42CD8AD8, 0x1234
RECORDS = [
    ("scaigrid", "POST /v1/chat/completions", TRACE, SPAN, 1, "vendor=x", PARENT, True, 1, 1_000, 9_000,
     {"scaigrid.function": "gateway", "http.response.status_code": 200, "ok": True, "share": 0.25,
      "tags": ("a", "b"), "none": None, "mixed": [1, "a"]},
     [("exception", 5_000, {"exception.type": "ValueError", "exception.escaped": "False"})],
     [(TRACE, LINKED, 1, {"messaging.batch.index": 3})], 2, "ValueError: no"),
    ("a.client.library", "EVALSHA", TRACE, SPAN + 1, 1, "", SPAN, False, 2, 2_000, 3_000,
     {"db.system.name": "redis", "server.port": 6379}, [], [], 0, None),
]


def decoded(data: bytes) -> dict:
    return MessageToDict(ExportTraceServiceRequest.FromString(data))


def test_our_encoding_is_the_sdks():
    records = [clean(record) for record in RECORDS]
    resource = Resource.create({"service.name": "scaigrid-gateway", "service.instance.id": "gateway-0-1"})
    ours = decoded(Encoder(dict(resource.attributes)).request(records))
    sdk = decoded(encode_spans(sdk_spans(records, resource, SpanLimits())).SerializePartialToString())
    for message in (ours, sdk):  # the low byte of a span's flags (its W3C trace flags): the SDK leaves it out
        for scope in message["resourceSpans"][0]["scopeSpans"]:
            for span in scope["spans"]:
                span["flags"] = span["flags"] & ~0xFF
                for link in span.get("links", ()):
                    link.pop("flags", None)
    assert ours == sdk
    spans = {s["name"]: s for scope in ours["resourceSpans"][0]["scopeSpans"] for s in scope["spans"]}
    keys = {a["key"] for a in spans["POST /v1/chat/completions"]["attributes"]}
    assert "tags" in keys and not {"none", "mixed"} & keys  # OTLP takes no None, and lists of one type only


def test_a_value_length_limit_cuts_strings():
    encoder = Encoder({"service.name": "s"}, max_length=4)
    record = clean(("scaigrid", "n", TRACE, SPAN, 1, "", 0, False, 0, 1, 2, {"s": "abcdefgh", "l": ["abcdef"]},
                    [], [], 0, None))
    (span,) = decoded(encoder.request([record]))["resourceSpans"][0]["scopeSpans"][0]["spans"]
    values = {a["key"]: a["value"] for a in span["attributes"]}
    assert values["s"] == {"stringValue": "abcd"} and values["l"]["arrayValue"]["values"] == [{"stringValue": "abcd"}]
