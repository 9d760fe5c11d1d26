"""A real HTTP receiver standing in for an SMS gateway: records each request (method, path,
headers, body) as JSON in OUT_DIR/NNNN.json and answers 200.

Usage: http_sink.py OUT_DIR — prints "ready PORT" once listening on 127.0.0.1 and runs until its
standard input closes."""
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

out = sys.argv[1]
count = [0]


class H(BaseHTTPRequestHandler):
    def do_POST(self):
        n = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(n).decode()
        count[0] += 1
        path = os.path.join(out, "%04d.json" % count[0])
        with open(path + ".tmp", "w") as f:
            json.dump({"method": "POST", "path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body}, f)
        os.rename(path + ".tmp", path)
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"status":"queued"}')

    def log_message(self, *args):
        pass


srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
threading.Thread(target=srv.serve_forever, daemon=True).start()
print("ready", srv.server_address[1], flush=True)
sys.stdin.read()
srv.shutdown()
