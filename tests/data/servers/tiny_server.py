"""A tiny HTTP server for the controller's server tests: /healthz, /echo (POST), /sick toggles health.

Listens on 127.0.0.1:$PORT. ``TINY_FAIL_HEALTH=1`` answers /healthz with 500 from the start.
"""

import http.server
import json
import os

state = {"sick": os.environ.get("TINY_FAIL_HEALTH") == "1"}


class Handler(http.server.BaseHTTPRequestHandler):
    def _answer(self, code: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._answer(500 if state["sick"] else 200, {"ok": not state["sick"]})
        elif self.path == "/sick":
            state["sick"] = True
            self._answer(200, {"sick": True})
        else:
            self._answer(200, {"path": self.path, "auth": self.headers.get("Authorization")})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer(201, {"path": self.path, "echo": body.decode()})

    def log_message(self, fmt: str, *args: object) -> None:
        print("request", fmt % args, flush=True)


print("tiny server on port", os.environ["PORT"], flush=True)
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
