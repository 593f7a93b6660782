#!/usr/bin/env python3
"""A local stand-in for ilert's deployment events API, for `make demo`: prints every event as
ilert would receive it (pretty JSON, integration key redacted) and answers 202 Accepted."""
import json
import sys
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
    server = HTTPServer(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()
