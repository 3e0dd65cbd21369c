"""A tiny authoritative DNS server on loopback for tests: fixed A records, changeable while it runs."""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

__all__ = ["DnsServer"]


@dataclass
class DnsServer:
    """Answers A queries from ``records`` (name -> addresses) with ``ttl``; NXDOMAIN otherwise."""

    records: dict[str, list[str]]
    ttl: int = 5
    port: int = 0
    _socket: socket.socket = field(init=False)
    _thread: threading.Thread = field(init=False)

    def start(self) -> DnsServer:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self._socket.recvfrom(4096)
            except OSError:
                return
            query = dns.message.from_wire(data)
            response = dns.message.make_response(query)
            question = query.question[0]
            name = question.name.to_text().rstrip(".")
            if name not in self.records:
                response.set_rcode(dns.rcode.NXDOMAIN)
            elif question.rdtype == dns.rdatatype.A:
                response.answer.append(
                    dns.rrset.from_text_list(question.name, self.ttl, "IN", "A", self.records[name])
                )
            self._socket.sendto(response.to_wire(), peer)

    def close(self) -> None:
        self._socket.close()
