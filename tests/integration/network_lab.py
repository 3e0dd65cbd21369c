"""A gateway between device namespaces and "cloud", "dns" and "corporate" namespaces, for real nftables.

Every namespace, veth and address exists only inside namespaces this module creates (named after
the test process, so parallel runs do not meet) and removes. Needs root, ``ip`` and ``nft``; the
caller skips (or fails under CI) when they are missing.

    device ns (10.N.0.2/24) ── veth ── gw (10.N.0.1) ── veth ── cloud   198.51.100.7/24
                                          │              ── veth ── dns     10.9.0.53/24
                                          │              ── veth ── corp    10.20.0.10/24
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["Host", "Lab", "lab_available"]


@dataclass(frozen=True, slots=True)
class Host:
    """A namespace with one address behind the gateway."""

    name: str
    namespace: str
    address: str
    gateway_address: str
    prefix: int = 24


@dataclass(slots=True)
class Lab:
    """Namespaces wired to one gateway namespace; :meth:`close` removes all of them."""

    tag: str = field(default_factory=lambda: f"fg{os.getpid() % 100000}")
    hosts: dict[str, Host] = field(default_factory=dict)
    gateway: str = ""
    _created: list[str] = field(default_factory=list)

    def start(self, devices: Sequence[tuple[str, str]]) -> Lab:
        """Create the gateway, the given devices (name, address) and cloud, dns and corp hosts."""
        self.gateway = self._namespace("gw")
        _run(["ip", "netns", "exec", self.gateway, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        for name, address in devices:
            self._host(name, address)
        self._host("cloud", "198.51.100.7")
        self._host("dns", "10.9.0.53")
        self._host("corp", "10.20.0.10")
        return self

    def _namespace(self, name: str) -> str:
        namespace = f"{self.tag}-{name}"
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True, check=False)
        _run(["ip", "netns", "add", namespace])
        self._created.append(namespace)
        _run(["ip", "netns", "exec", namespace, "ip", "link", "set", "lo", "up"])
        return namespace

    def _host(self, name: str, address: str) -> Host:
        namespace = self._namespace(name)
        gateway_address = address.rsplit(".", 1)[0] + ".1"
        inside, outside = f"v{len(self.hosts)}h", f"v{len(self.hosts)}g"
        _run(["ip", "link", "add", inside, "netns", namespace, "type", "veth",
              "peer", "name", outside, "netns", self.gateway])  # fmt: skip
        _run(["ip", "-n", namespace, "addr", "add", f"{address}/24", "dev", inside])
        _run(["ip", "-n", namespace, "link", "set", inside, "up"])
        _run(["ip", "-n", namespace, "route", "add", "default", "via", gateway_address])
        _run(["ip", "-n", self.gateway, "addr", "add", f"{gateway_address}/24", "dev", outside])
        _run(["ip", "-n", self.gateway, "link", "set", outside, "up"])
        host = Host(name, namespace, address, gateway_address)
        self.hosts[name] = host
        return host

    def nft_prefix(self) -> tuple[str, ...]:
        """The command prefix that runs nft in the gateway namespace."""
        return ("ip", "netns", "exec", self.gateway)

    def python(self, host: str, code: str, *, args: Sequence[str] = ()) -> subprocess.Popen[bytes]:
        """Start Python ``code`` inside ``host``'s namespace."""
        return subprocess.Popen(
            ["ip", "netns", "exec", self.hosts[host].namespace, sys.executable, "-c", textwrap.dedent(code),
             *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip

    def run(self, host: str, code: str, *, args: Sequence[str] = (), timeout: float = 20) -> str:
        """Run Python ``code`` inside ``host``'s namespace and return its stdout; raise on failure."""
        process = self.python(host, code, args=args)
        out, err = process.communicate(timeout=timeout)
        if process.returncode != 0:
            raise AssertionError(f"{host}: exit {process.returncode}: {err.decode()[-2000:]}")
        return out.decode()

    @staticmethod
    def stop(process: subprocess.Popen[bytes]) -> None:
        """Kill a process started by :meth:`python` and close its pipes."""
        process.kill()
        process.communicate()

    def close(self) -> None:
        """Remove every namespace (their veths go with them)."""
        for namespace in reversed(self._created):
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, check=False)
        self._created.clear()


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {done.stderr.decode().strip()}")


def lab_available() -> str | None:
    """None when the lab can run here; otherwise why not."""
    if os.geteuid() != 0:
        return "network namespaces and nftables need root"
    for program in ("ip", "nft"):
        if shutil.which(program) is None:
            return f"{program} is not installed"
    probe = subprocess.run(["ip", "netns", "add", f"fgprobe{os.getpid()}"], capture_output=True, check=False)
    if probe.returncode != 0:
        return f"cannot create network namespaces: {probe.stderr.decode().strip()}"
    subprocess.run(["ip", "netns", "del", f"fgprobe{os.getpid()}"], capture_output=True, check=False)
    return None
