#!/usr/bin/env python3
"""A stand-in for Prometheus's query API, for deploy/check.sh: it exercises
scripts/canary-gate.sh against recorded answers.

GET /<scenario>/api/v1/query?query=... answers with testdata/<scenario>.json
when the query is the gate's (it names the canary's selector and the four
series the gate needs), and with 400 and a Prometheus error otherwise.

Usage: fake_prometheus.py PORT_FILE [LIFETIME_SECONDS]
Listens on 127.0.0.1 on a port of the kernel's choosing, writes the port to
PORT_FILE, and exits by itself after LIFETIME_SECONDS (default 60) should
the caller forget to stop it.
"""
import http.server
import json
import pathlib
import sys
import threading
from urllib.parse import parse_qs, urlsplit

TESTDATA = pathlib.Path(__file__).resolve().parent / "testdata"
NEEDED = ('track="canary"', "dialstack_media_calls_completed_total", "dialstack_media_call_failures_total",
          'dialstack_call_mos_bucket{track="canary",le="3.6"}', "dialstack_call_mos_count")


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        url = urlsplit(self.path)
        scenario, _, rest = url.path.strip("/").partition("/")
        if rest != "api/v1/query" or not (TESTDATA / f"{scenario}.json").is_file():
            return self.reply(404, {"status": "error", "errorType": "not_found", "error": url.path})
        query = parse_qs(url.query).get("query", [""])[0]
        missing = [n for n in NEEDED if n not in query]
        if missing:
            return self.reply(400, {"status": "error", "errorType": "bad_data",
                                    "error": f"not the gate's query; lacks {missing}"})
        doc = json.loads((TESTDATA / f"{scenario}.json").read_text())
        # Prometheus refuses a query it cannot run with 400 and its reason.
        self.reply(400 if doc.get("status") == "error" else 200, doc)

    def reply(self, status, doc):
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    port_file = pathlib.Path(sys.argv[1])
    lifetime = float(sys.argv[2]) if len(sys.argv) > 2 else 60.0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    timer = threading.Timer(lifetime, server.shutdown)
    timer.daemon = True
    timer.start()
    port_file.write_text(str(server.server_address[1]))
    server.serve_forever()


if __name__ == "__main__":
    main()
