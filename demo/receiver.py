#!/usr/bin/env python3
"""A local stand-in for ilert's deployment events API, for `make demo`: prints every event as
ilert would receive it (pretty JSON, integration key redacted) and answers 202 Accepted."""
import argparse
import json
from http.server import BaseHTTPRequestHandler, HTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        try:
            event = json.loads(body)
            if "integrationKey" in event:
                event["integrationKey"] = "[redacted]"
            text = json.dumps(event, indent=2, sort_keys=True)
        except ValueError:
            text = body.decode(errors="replace")
        print(f"\n  ilert received POST {self.path}:", flush=True)
        print("\n".join("    " + line for line in text.splitlines()), flush=True)
        self.send_response(202)
        self.end_headers()

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="port to listen on; 0: any free one")
    parser.add_argument("--run-id", default="", help="names this receiver in its first line")
    args = parser.parse_args()
    server = HTTPServer(("127.0.0.1", args.port), Handler)
    # One line, written at once: the demo waits for it, with this run's id, to learn the port.
    print(f"receiver {args.run_id} listening on port {server.server_address[1]}, ready", flush=True)
    server.serve_forever()
