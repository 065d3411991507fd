"""Measures usage event streams against running services (see bench-stream.sh).

Opens N streams of N users on the streaming service and reads the process's resident memory
before and after; then, with them open, records for one more watched user on the writing service
(the same or another instance) and times each write, from sending POST /usage to the event that
shows it on the stream. Prints one JSON line. It measures; it asserts nothing.
"""

import argparse
import base64
import http.client
import json
import selectors
import socket
import statistics
import time


def token(project, uid):
    def segment(value):
        raw = json.dumps(value, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    now = int(time.time())
    payload = {
        "iss": f"https://securetoken.google.com/{project}",
        "aud": project,
        "sub": uid,
        "user_id": uid,
        "iat": now,
        "auth_time": now,
        "exp": now + 3600,
        "firebase": {"sign_in_provider": "custom", "identities": {}},
    }
    return f"{segment({'alg': 'none', 'typ': 'JWT'})}.{segment(payload)}."


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def open_stream(host, port, bearer):
    sock = socket.create_connection((host, port))
    sock.sendall(
        (
            f"GET /usage/stream HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: Bearer {bearer}\r\n\r\n"
        ).encode()
    )
    return sock


def read_until(sock, buffer, needle, deadline):
    """Reads from sock into buffer until needle is in it; returns the time it was seen."""
    while needle not in buffer:
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("the stream closed")
        buffer.extend(chunk)
    return time.perf_counter()


def post_usage(connection, bearer, tokens):
    connection.request(
        "POST",
        "/usage",
        body=json.dumps({"tokens": tokens}),
        headers={"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"},
    )
    response = connection.getresponse()
    response.read()
    if response.status != 200:
        raise RuntimeError(f"POST /usage answered {response.status}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--stream-port", type=int, required=True)
    parser.add_argument("--write-port", type=int, required=True)
    parser.add_argument("--pid", type=int, required=True, help="the streaming service's")
    parser.add_argument("--project", required=True)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    host = "127.0.0.1"

    before = rss_kib(args.pid)
    selector = selectors.DefaultSelector()
    streams = []
    for i in range(args.streams):
        sock = open_stream(host, args.stream_port, token(args.project, f"watcher-{i}"))
        streams.append((sock, bytearray()))
    deadline = time.monotonic() + 120
    for sock, buffer in streams:
        read_until(sock, buffer, b"event: usage", deadline)
    time.sleep(2)
    after = rss_kib(args.pid)

    uid = f"measured-{int(time.time())}"
    bearer = token(args.project, uid)
    sock = open_stream(host, args.stream_port, bearer)
    buffer = bytearray()
    read_until(sock, buffer, b"event: usage", time.monotonic() + 30)
    writer = http.client.HTTPConnection(host, args.write_port)
    latencies = []
    for n in range(1, args.samples + 1):
        sent = time.perf_counter()
        post_usage(writer, bearer, 1)
        seen = read_until(sock, buffer, f'"tokensUsed":{n},'.encode(), time.monotonic() + 30)
        latencies.append((seen - sent) * 1000)
        time.sleep(0.02)
    latencies.sort()
    cut = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]
    print(
        json.dumps(
            {
                "label": args.label,
                "streams": args.streams,
                "rss_before_mib": round(before / 1024, 1),
                "rss_after_mib": round(after / 1024, 1),
                "kib_per_stream": (
                    round((after - before) / args.streams, 1) if args.streams else None
                ),
                "samples": len(latencies),
                "latency_ms_p50": round(statistics.median(latencies), 2),
                "latency_ms_p99": round(cut(0.99), 2),
                "latency_ms_max": round(latencies[-1], 2),
            }
        )
    )
    for sock, _ in streams:
        sock.close()


if __name__ == "__main__":
    main()
