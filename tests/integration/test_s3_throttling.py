"""SlowDown / 503 from S3 is retried with backoff, not reported as a failure.

moto never throttles, so a small HTTP proxy in front of it answers the first requests with S3's
503 SlowDown error and forwards the rest unchanged (the real botocore retry path runs)."""

from __future__ import annotations

import http.client
import http.server
import json
import threading
from urllib.parse import urlsplit

from moto_fixture import run_cli

SLOWDOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message><RequestId>x</RequestId></Error>"
)


def throttling_proxy(upstream: str, throttle_first: int):
    host, port = urlsplit(upstream).hostname, urlsplit(upstream).port
    state = {"seen": 0, "throttled": 0}
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def _handle(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with lock:
                state["seen"] += 1
                throttle = state["throttled"] < throttle_first and state["seen"] % 2 == 1
                state["throttled"] += throttle
            if throttle:
                self.send_response(503)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(SLOWDOWN)))
                self.end_headers()
                self.wfile.write(SLOWDOWN if self.command != "HEAD" else b"")
                return
            conn = http.client.HTTPConnection(host, port, timeout=60)
            headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in ("connection", "transfer-encoding", "content-length", "server", "date"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            conn.close()

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, state


def test_slowdown_is_retried(tmp_path, s3_env, bucket):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        (src / f"f{i}.txt").write_text(f"file {i}\n" * 100)
    server, state = throttling_proxy(s3_env["AWS_ENDPOINT_URL"], throttle_first=2)
    try:
        env = {**s3_env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{server.server_address[1]}", "AWS_MAX_ATTEMPTS": "5"}
        r = run_cli(env, "data", "upload", str(src), f"s3://{bucket}/p", "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        assert json.loads(r.stdout.strip().splitlines()[-1])["transferred"] == 4
        assert state["throttled"] == 2
        assert run_cli(env, "data", "verify", f"s3://{bucket}/p", "--deep").returncode == 0
    finally:
        server.shutdown()
