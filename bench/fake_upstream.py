"""A fast fake OpenAI-compatible upstream for bench/gateway.py: no delay, HTTP/1.1 keep-alive, asyncio only.

POST .../chat/completions answers a fixed small completion with usage; with "stream": true, 20 content chunks
(the last with finish_reason "stop"), then a usage chunk (choices: []) and `data: [DONE]`, chunked as OpenAI's.
Anything else is 404. Usage: python bench/fake_upstream.py PORT
"""
from __future__ import annotations

import asyncio
import json
import sys

CHUNKS = 20
USAGE = {"prompt_tokens": 12, "completion_tokens": CHUNKS, "total_tokens": 12 + CHUNKS}
ANSWER = {"id": "chatcmpl-fake", "object": "chat.completion", "created": 1700000000, "model": "fake",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from the fake upstream."},
                       "finish_reason": "stop"}], "usage": USAGE}


def _response(status: str, body: bytes, content_type: str) -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            f"Connection: keep-alive\r\n\r\n").encode() + body


def _stream() -> bytes:
    def chunk(choices: list, **extra) -> dict:
        return {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1700000000, "model": "fake",
                "choices": choices, **extra}
    events = [chunk([{"index": 0, "delta": {"role": "assistant", "content": f"tok{i} "} if i == 0 else
                      {"content": f"tok{i} "}, "finish_reason": "stop" if i == CHUNKS - 1 else None}])
              for i in range(CHUNKS)]
    events.append(chunk([], usage=USAGE))
    out = [b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
           b"Connection: keep-alive\r\n\r\n"]
    for data in [f"data: {json.dumps(e)}\n\n".encode() for e in events] + [b"data: [DONE]\n\n"]:
        out.append(b"%x\r\n%s\r\n" % (len(data), data))
    return b"".join(out) + b"0\r\n\r\n"


PLAIN = _response("200 OK", json.dumps(ANSWER).encode(), "application/json")
STREAM = _stream()
MISSING = _response("404 Not Found", b'{"error": {"message": "not found"}}', "application/json")


class Http(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buffer = transport, b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = self.buffer[:end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return  # the body is still coming
            body, self.buffer = self.buffer[end + 4:end + 4 + length], self.buffer[end + 4 + length:]
            method, path = head.split(" ", 2)[:2]
            if method != "POST" or not path.endswith("/chat/completions"):
                self.transport.write(MISSING)
            else:
                self.transport.write(STREAM if json.loads(body or b"{}").get("stream") else PLAIN)


async def serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Http, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(serve(int(sys.argv[1])))
    except KeyboardInterrupt:
        pass
