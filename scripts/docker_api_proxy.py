"""A Docker API proxy that lowers a too-new API version in request paths.

testcontainers 0.27 (through bollard 0.20) sends every request as
`/v1.52/...` and does not negotiate, so an engine older than Docker 29 (API
1.52) rejects all of them with "client version 1.52 is too new". Debian 12's
`docker.io` is Docker 20.10 (API 1.41). This proxy listens on a Unix socket,
forwards to the engine's socket, and rewrites `/vX.Y/` to the engine's
highest version when X.Y is newer; everything else passes through byte for
byte (request bodies, streamed responses, and upgraded attach/exec streams).
The calls testcontainers makes (create, start, inspect, logs, exec, stop,
remove) exist with the same shape in API 1.41.

Usage: python3 scripts/docker_api_proxy.py LISTEN_SOCKET ENGINE_SOCKET
"""

import json
import os
import re
import socket
import sys
import threading

VERSIONED = re.compile(rb"^/v(\d+)\.(\d+)(/.*)$", re.S)
MAX_HEAD = 1 << 20


def engine_api_version(engine):
    """The engine's highest API version, from GET /version (unversioned)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(engine)
    s.sendall(b"GET /version HTTP/1.0\r\nHost: docker\r\n\r\n")
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    body = data.split(b"\r\n\r\n", 1)[1]
    major, minor = json.loads(body)["ApiVersion"].split(".")
    return int(major), int(minor)


class Reader:
    """Buffered reads from a socket."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self.buf += chunk
        return True

    def until(self, marker):
        while marker not in self.buf:
            if len(self.buf) > MAX_HEAD or not self.fill():
                return None
        head, self.buf = self.buf.split(marker, 1)
        return head + marker

    def exactly(self, n, out):
        while n > 0:
            if not self.buf and not self.fill():
                raise EOFError
            part, self.buf = self.buf[:n], self.buf[n:]
            out.sendall(part)
            n -= len(part)

    def rest(self, out):
        if self.buf:
            out.sendall(self.buf)
            self.buf = b""
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                return
            out.sendall(chunk)


def rewrite(head, max_version):
    line, sep, rest = head.partition(b"\r\n")
    parts = line.split(b" ")
    if len(parts) == 3:
        m = VERSIONED.match(parts[1])
        if m and (int(m.group(1)), int(m.group(2))) > max_version:
            parts[1] = b"/v%d.%d" % max_version + m.group(3)
    return b" ".join(parts) + sep + rest


def headers(head):
    out = {}
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            out[name.strip().lower()] = value.strip().lower()
    return out


def requests(client, engine, max_version):
    """Client to engine: one HTTP/1.1 request after another, rewritten."""
    reader = Reader(client)
    try:
        while True:
            head = reader.until(b"\r\n\r\n")
            if head is None:
                break
            engine.sendall(rewrite(head, max_version))
            h = headers(head)
            if b"upgrade" in h.get(b"connection", b""):
                reader.rest(engine)  # attach/exec: a raw stream from now on
                break
            if h.get(b"transfer-encoding", b"") == b"chunked":
                while True:
                    size_line = reader.until(b"\r\n")
                    if size_line is None:
                        raise EOFError
                    engine.sendall(size_line)
                    size = int(size_line.split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        # Trailer lines, then the empty line that ends the body.
                        while True:
                            line = reader.until(b"\r\n")
                            if line is None:
                                raise EOFError
                            engine.sendall(line)
                            if line == b"\r\n":
                                break
                        break
                    reader.exactly(size + 2, engine)
            else:
                length = int(h.get(b"content-length", b"0") or b"0")
                reader.exactly(length, engine)
    except (OSError, EOFError, ValueError):
        pass
    finally:
        try:
            engine.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def responses(engine, client):
    """Engine to client: bytes as they come."""
    try:
        while True:
            chunk = engine.recv(65536)
            if not chunk:
                break
            client.sendall(chunk)
    except OSError:
        pass
    finally:
        try:
            client.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def serve(client, engine_path, max_version):
    engine = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        engine.connect(engine_path)
    except OSError:
        client.close()
        return
    back = threading.Thread(target=responses, args=(engine, client), daemon=True)
    back.start()
    requests(client, engine, max_version)
    back.join()
    client.close()
    engine.close()


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    listen, engine = sys.argv[1], sys.argv[2]
    max_version = engine_api_version(engine)
    if os.path.exists(listen):
        os.unlink(listen)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(listen)
    os.chmod(listen, 0o660)
    server.listen(64)
    print("docker_api_proxy: %s -> %s (requests newer than API %d.%d are sent as %d.%d)"
          % (listen, engine, max_version[0], max_version[1], max_version[0], max_version[1]),
          file=sys.stderr, flush=True)
    while True:
        client, _ = server.accept()
        threading.Thread(target=serve, args=(client, engine, max_version), daemon=True).start()


if __name__ == "__main__":
    main()
