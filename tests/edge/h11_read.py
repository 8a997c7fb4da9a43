"""Sends one raw request to HOST:PORT and parses the answer with h11, a strict third-party
HTTP/1.1 parser; prints {"status", "http_version", "headers", "body", "closed"} as JSON.
Exits 1 (with the parser's error) when the answer is not valid HTTP/1.x framing.

Usage: h11_read.py HOST PORT METHOD TARGET REQUEST_BYTES (with \\r\\n escapes)
h11 only writes HTTP/1.1 requests, so the (HTTP/1.0) request bytes are sent as given and the
client state machine is told about the request separately, which is all it needs to frame
the response."""
import json
import socket
import sys

import h11

host, port, method, target, raw = sys.argv[1:6]
raw = raw.encode().decode("unicode_escape").encode("latin-1")

conn = h11.Connection(our_role=h11.CLIENT)
conn.send(h11.Request(method=method, target=target, headers=[("host", "x")]))
conn.send(h11.EndOfMessage())

s = socket.create_connection((host, int(port)), timeout=10)
s.sendall(raw)
out = {"body": "", "closed": False}
try:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = s.recv(65536)
            if not data:
                out["closed"] = True
            conn.receive_data(data)
            continue
        if isinstance(event, h11.Response):
            out["status"] = event.status_code
            out["http_version"] = event.http_version.decode()
            out["headers"] = [[k.decode(), v.decode()] for k, v in event.headers]
        elif isinstance(event, h11.Data):
            out["body"] += event.data.decode("latin-1")
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            break
except h11.RemoteProtocolError as e:
    print(json.dumps({"error": str(e)}))
    sys.exit(1)
# A close-delimited body ends with the connection; otherwise see whether the server closes.
if not out["closed"]:
    try:
        s.settimeout(5)
        out["closed"] = s.recv(1) == b""
    except OSError:
        out["closed"] = True
print(json.dumps(out))
