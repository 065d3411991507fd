"""A webhook receiver that checks signatures with the Standard Webhooks reference library.

    receiver.py SECRET [PORT]

Listens on PORT (default: a free port) of 127.0.0.1 and prints it as its first line. Routes:
  POST /hook           verifies the signature: 204 and recorded, or 400 and nothing recorded
  POST /hold-first     holds the first delivery of each event id for a minute without an
                       answer (its sender is meant to die meanwhile); later ones as /hook
  GET  /held           the event ids held so far
  POST /status/CODE    answers CODE without looking at the request
  POST /slow/SECONDS   answers 204 after SECONDS
  GET  /received       the verified deliveries so far: [{"id", "type", "body"}]
"""

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook, WebhookVerificationError

webhook = Webhook(sys.argv[1])
received = []
held = []
received_lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(length)
        parts = self.path.strip("/").split("/")
        if parts == ["hook"]:
            self.verify_and_record(body)
        elif parts == ["hold-first"]:
            event_id = self.headers.get("webhook-id")
            with received_lock:
                first = event_id not in held
                if first:
                    held.append(event_id)
            if first:
                time.sleep(60)
                return
            self.verify_and_record(body)
        elif len(parts) == 2 and parts[0] == "status":
            self.answer(int(parts[1]))
        elif len(parts) == 2 and parts[0] == "slow":
            time.sleep(float(parts[1]))
            self.answer(204)
        else:
            self.answer(404)

    def verify_and_record(self, body):
        try:
            event = webhook.verify(body, dict(self.headers.items()))
        except WebhookVerificationError as error:
            self.answer(400, json.dumps({"error": str(error)}).encode())
            return
        with received_lock:
            received.append(
                {
                    "id": self.headers["webhook-id"],
                    "type": event.get("type"),
                    "content_type": self.headers.get("content-type"),
                    "body": body.decode(),
                }
            )
        self.answer(204)

    def do_GET(self):
        if self.path == "/received":
            with received_lock:
                self.answer(200, json.dumps(received).encode())
        elif self.path == "/held":
            with received_lock:
                self.answer(200, json.dumps(held).encode())
        else:
            self.answer(404)

    def answer(self, status, body=b""):
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        if body:
            self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


port = int(sys.argv[2]) if len(sys.argv) > 2 else 0
server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
