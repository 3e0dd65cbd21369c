"""Test doubles and documents shared by the segmentation tests (unit, API, CLI, attacks).

Importable from every test module (``tests/`` is on ``sys.path`` through its ``conftest.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fleetguard.segment.errors import RulesetRejected

__all__ = ["EMPTY_SET", "RecordingNft", "camera_mud"]

EMPTY_SET = '{"nftables": []}'


@dataclass
class RecordingNft:
    """Records the scripts nft would run; answers ``nft -j`` queries from ``answers`` (else empty)."""

    scripts: list[tuple[str, bool]] = field(default_factory=list)
    answers: dict[tuple[str, ...], str] = field(default_factory=dict)
    refuse: bool = False

    def run(self, script: str, *, check_only: bool = False) -> None:
        if self.refuse:
            raise RulesetRejected("nft refused the change (exit 1); the ruleset in force is unchanged: boom")
        self.scripts.append((script, check_only))

    def query(self, *arguments: str) -> str:
        return self.answers.get(arguments, EMPTY_SET)


def camera_mud(url: str, cloud: str) -> dict[str, object]:
    """A camera's MUD file: TCP 443 to ``cloud`` and its replies (the ACL model of RFC 8519)."""
    return {
        "ietf-mud:mud": {
            "mud-version": 1, "mud-url": url, "last-update": "2025-01-01T00:00:00+00:00",
            "cache-validity": 48, "is-supported": True, "systeminfo": "Example camera",
            "mfg-name": "Example", "model-name": "Cam 1",
            "from-device-policy": {"access-lists": {"access-list": [{"name": "from-ipv4"}]}},
            "to-device-policy": {"access-lists": {"access-list": [{"name": "to-ipv4"}]}},
        },
        "ietf-access-control-list:acls": {"acl": [
            _acl("from-ipv4", "cloud", {"ipv4": {"protocol": 6, "destination-ipv4-network": f"{cloud}/32"},
                                        "tcp": {"destination-port": {"operator": "eq", "port": 443}}}),
            _acl("to-ipv4", "cloud-replies", {"ipv4": {"protocol": 6, "source-ipv4-network": f"{cloud}/32"},
                                              "tcp": {"source-port": {"operator": "eq", "port": 443}}}),
        ]},
    }  # fmt: skip


def _acl(name: str, ace: str, matches: dict[str, object]) -> dict[str, object]:
    return {
        "name": name,
        "type": "ipv4-acl-type",
        "aces": {"ace": [{"name": ace, "actions": {"forwarding": "accept"}, "matches": matches}]},
    }
