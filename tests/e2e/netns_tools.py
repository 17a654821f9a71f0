"""Small programs the namespace test runs on its "machines": an echo service and a transfer check.

``echo HOST PORT``: echoes every connection until its input ends, then closes it.
``transfer HOST PORT MEGABYTES SEED``: sends that many pseudo-random megabytes (from SEED),
reads the echo concurrently, prints ``progress`` once 2 MB came back (the test kills a router
then), and finally ``ok`` or ``mismatch`` with the byte counts.
"""

from __future__ import annotations

import hashlib
import random
import socket
import socketserver
import sys
import threading

MB = 1024 * 1024


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(262144):
            self.request.sendall(data)
        self.request.shutdown(socket.SHUT_WR)


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def echo(host: str, port: int) -> None:
    with _Server((host, port), _Echo) as server:
        print("serving", flush=True)
        server.serve_forever()


def transfer(host: str, port: int, megabytes: int, seed: int) -> int:
    payload = random.Random(seed).randbytes(megabytes * MB)
    sock = socket.create_connection((host, port), timeout=120)

    def send() -> None:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)

    writer = threading.Thread(target=send)
    writer.start()
    digest, received, told = hashlib.sha256(), 0, False
    while data := sock.recv(262144):
        digest.update(data)
        received += len(data)
        if not told and received >= 2 * MB:
            print("progress", flush=True)
            told = True
    writer.join()
    sock.close()
    good = received == len(payload) and digest.digest() == hashlib.sha256(payload).digest()
    print(f"{'ok' if good else 'mismatch'} sent={len(payload)} received={received}", flush=True)
    return 0 if good else 1


if __name__ == "__main__":
    if sys.argv[1] == "echo":
        echo(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit(transfer(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])))
