#!/usr/bin/env python3
"""A real HTTP webhook receiver for CI: appends every POST as {"path", "headers", "body"} to a
JSON-lines file and answers 200. Usage: receiver.py OUT.jsonl PORTFILE (writes its port there)."""
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

out_path, port_path = sys.argv[1], sys.argv[2]


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length).decode("utf-8")
        record = {"path": self.path, "headers": dict(self.headers), "body": body}
        with open(out_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(port_path, "w") as f:
    f.write(str(server.server_address[1]))
server.serve_forever()
