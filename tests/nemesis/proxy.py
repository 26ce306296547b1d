"""A small threaded TCP proxy that can partition: one per (candidate "host", store member).

Modes:
- ``forward``: bytes pass both ways.
- ``silent``: nothing passes, connections stay open (a cable pulled, a firewall DROP): data
  already read is held and delivered after healing, as TCP retransmission would; new
  connections are accepted but nothing reaches the member.
- ``reset``: every connection is closed with an RST, and new ones are reset at once (a REJECT).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

from servers import free_port

_LINGER_RST = struct.pack("ii", 1, 0)


def _rst(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    with contextlib.suppress(OSError):
        sock.close()


class Proxy:
    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.mode = "forward"
        self.cond = threading.Condition()
        self.conns: set[socket.socket] = set()
        self.listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        self.closed = False
        threading.Thread(target=self._accept, daemon=True, name=f"proxy-{self.port}").start()

    def set_mode(self, mode: str) -> None:
        with self.cond:
            self.mode = mode
            self.cond.notify_all()
            if mode == "reset":
                for s in list(self.conns):
                    _rst(s)
                self.conns.clear()

    def close(self) -> None:
        self.closed = True
        self.set_mode("reset")
        with contextlib.suppress(OSError):
            self.listener.close()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.mode == "reset":
                _rst(client)
                continue
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        with self.cond:
            while self.mode == "silent":
                self.cond.wait()
            if self.mode == "reset":
                _rst(client)
                return
        try:
            upstream = socket.create_connection(self.target, timeout=3)
            upstream.settimeout(None)
        except OSError:
            _rst(client)
            return
        with self.cond:
            self.conns |= {client, upstream}
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                with self.cond:
                    while self.mode == "silent":
                        self.cond.wait()
                    if self.mode == "reset" or src not in self.conns:
                        raise OSError("reset")
                if not data:
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
        except OSError:
            with self.cond:
                self.conns.discard(src)
                self.conns.discard(dst)
            _rst(src)
            _rst(dst)


class Partitions:
    """Per-candidate proxies in front of every member; `partition(candidate, kind)` cuts one
    candidate off and returns the function that heals it."""

    def __init__(self, scheme: str, member_endpoints: list[str], candidates: list[str]) -> None:
        self.scheme = scheme
        self.proxies = {c: [Proxy(e) for e in member_endpoints] for c in candidates}

    def backend_for(self, candidate: str) -> str:
        return f"{self.scheme}://" + ",".join(p.endpoint for p in self.proxies[candidate])

    def partition(self, candidate: str, kind: str) -> callable:  # type: ignore[valid-type]
        mode = "silent" if kind == "partition-silent" else "reset"
        for p in self.proxies[candidate]:
            p.set_mode(mode)

        def heal() -> None:
            for p in self.proxies[candidate]:
                p.set_mode("forward")

        return heal

    def close(self) -> None:
        for ps in self.proxies.values():
            for p in ps:
                p.close()
