"""An OpenAI-style chat endpoint on 127.0.0.1 that misbehaves on purpose: late, refusing or
failing. It stands in for a remote LLM server in the tests of what a generator (and the RAG
service above it) does when that server is slow or answers an error. The errors the project's own
LLM service answers are tested in test_llm_service.py."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Behaviour:
    """What the endpoint answers next; the test may change it between requests."""

    status: int = 200
    delay_s: float = 0.0
    message: str = "late"  # the answer's content, or the error's message
    # a prompt (all messages' content) longer than this is refused as over the model's context
    max_prompt_chars: int | None = None
    calls: list[float] = field(default_factory=list)  # when each request came in
    prompt_chars: list[int] = field(default_factory=list)  # each request's prompt length


@contextmanager
def chat_endpoint(behaviour: Behaviour) -> Iterator[str]:
    """Serve ``behaviour`` at ``http://127.0.0.1:<port>/v1``; yields that base URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            behaviour.calls.append(time.monotonic())
            request = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
            chars = sum(len(m.get("content") or "") for m in request.get("messages", []))
            behaviour.prompt_chars.append(chars)
            time.sleep(behaviour.delay_s)
            if behaviour.max_prompt_chars is not None and chars > behaviour.max_prompt_chars:
                message = f"This model's maximum context length is {behaviour.max_prompt_chars} characters"
                error = {"message": message, "type": "invalid_request_error", "param": "messages",
                         "code": "context_length_exceeded"}  # fmt: skip
                self.reply(400, {"error": error})
            elif behaviour.status == 200:
                answer = {"role": "assistant", "content": behaviour.message}
                choice = {"index": 0, "finish_reason": "stop", "message": answer}
                body = {
                    "id": "x",
                    "object": "chat.completion",
                    "created": 0,
                    "model": "m",
                    "choices": [choice],
                }
                self.reply(200, body)
            else:  # the shape the project's LLM service and vLLM answer errors in
                kind = "server_error" if behaviour.status >= 500 else "invalid_request_error"
                error = {"message": behaviour.message, "type": kind, "param": None, "code": None}
                self.reply(behaviour.status, {"error": error})

        def reply(self, status: int, body: dict) -> None:
            try:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(json.dumps(body).encode())
            except OSError:  # the client gave up first
                pass

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
