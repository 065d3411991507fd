"""Measures threshold events from the record that raises them to a webhook receiver (see
bench-notify.sh).

Starts a receiver in this process and the service binary with its webhook pointed there, then,
one user at a time, records 900 tokens of a 1,000-token day (crossing 80 %) and times the
event's arrival: from sending POST /usage (an upper bound of the time from the commit) and from
its answer (a lower bound: the commit is before the answer). Prints one JSON line. It
measures; it asserts nothing.

    bench_notify.py --bin BIN --label LABEL [--samples N] [NAME=VALUE ...]
"""

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from bench_stream import token

PROJECT = "demo-token-limits-notify-bench"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

arrivals = {}
arrived = threading.Condition()


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", "0")))
        at = time.monotonic()
        with arrived:
            arrivals.setdefault(self.headers["webhook-id"], at)
            arrived.notify_all()
        self.send_response(204)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format, *args):
        pass


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_service(binary, receiver_port, environment):
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "FIREBASE_PROJECT_ID": PROJECT,
        "DAILY_LIMIT_TRIAL": "1000",
        "NOTIFY_THRESHOLDS": "0.8",
        "NOTIFY_WEBHOOK_URL": f"http://127.0.0.1:{receiver_port}/hook",
        "NOTIFY_WEBHOOK_SECRET": SECRET,
        "LOG_FORMAT": "text",
        "RUST_LOG": "warn",
        **environment,
    }
    process = subprocess.Popen([binary], env=env, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            connection.request("GET", "/readyz")
            if connection.getresponse().status == 200:
                return process, port
        except OSError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError("the service did not become ready")


def percentile(values, share):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True)
    parser.add_argument("--label", required=True)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("environment", nargs="*", help="NAME=VALUE for the service")
    args = parser.parse_args()

    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    environment = dict(item.split("=", 1) for item in args.environment)
    process, port = start_service(args.bin, receiver.server_address[1], environment)
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port)
        from_send, from_answer, lost = [], [], 0
        run = int(time.time())
        for sample in range(args.samples):
            uid = f"bench-{run}-{sample}"
            body = json.dumps({"tokens": 900})
            sent = time.monotonic()
            connection.request(
                "POST",
                "/usage",
                body,
                {
                    "Authorization": f"Bearer {token(PROJECT, uid)}",
                    "Content-Type": "application/json",
                },
            )
            response = connection.getresponse()
            response.read()
            answered = time.monotonic()
            if response.status != 200:
                raise RuntimeError(f"POST /usage answered {response.status}")
            prefix = f"{uid}_"
            with arrived:
                found = arrived.wait_for(
                    lambda: next((at for key, at in arrivals.items() if key.startswith(prefix)), None),
                    timeout=30,
                )
            if found is None:
                lost += 1
                continue
            from_send.append((found - sent) * 1000)
            from_answer.append(max(0.0, found - answered) * 1000)
    finally:
        process.kill()
        process.wait()
        receiver.shutdown()

    def figures(values):
        return {
            "p50_ms": round(statistics.median(values), 2),
            "p99_ms": round(percentile(values, 0.99), 2),
            "max_ms": round(max(values), 2),
        }

    print(
        json.dumps(
            {
                "label": args.label,
                "samples": len(from_send),
                "not_arrived_in_30s": lost,
                "from_request_sent": figures(from_send),
                "from_answer": figures(from_answer),
            }
        )
    )


if __name__ == "__main__":
    main()
