"""The segmentation service: stored MUD profiles, device bindings, the fleet context, and enforcement.

Theory of operation. A device is *managed* once it has a network binding (its IPv4/IPv6 address,
optionally its MAC). Its policy is the MUD profile of its MUD URL: the device's own (recorded at
enrollment from the certificate's MUD URL extension, RFC 8520 section 10) or else its device
type's. :meth:`SegmentationService.compile` turns the whole fleet into one ruleset
(:mod:`fleetguard.segment.compiler`); :meth:`apply` checks it with ``nft -c`` and applies it with
``nft -f`` in one transaction, then records the generation and ``segment.applied``. A device that
is quarantined or decommissioned in the inventory is in the quarantine set of every ruleset, and
:meth:`enforce_state` adds or removes it as an element update when its state changes, without a
reload. Profiles are added only when they parse, and, where the installation requires signatures,
only with a detached CMS signature by a trusted signer: a refused profile changes nothing.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import ipaddress
import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from cryptography import x509
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fleetguard.errors import InvalidInput
from fleetguard.events.entry import NewEvent
from fleetguard.events.log import EventLog
from fleetguard.events.relay import publish_committed
from fleetguard.inventory.lifecycle import State
from fleetguard.inventory.service import Inventory, device_event_subject
from fleetguard.segment.compiler import (
    CompiledFleet,
    DeviceBinding,
    FleetContext,
    IpAddress,
    IpNetwork,
    compile_fleet,
    profile_names,
)
from fleetguard.segment.errors import MudSignatureInvalid, ProfileNotFound, SegmentError
from fleetguard.segment.model import Flow, MudProfile
from fleetguard.segment.mud import parse_mud
from fleetguard.segment.nftables import (
    ElementUpdate,
    NftCommand,
    Violation,
    quarantine_update,
    read_counters,
    read_violations,
    render_fleet,
    set_elements,
)
from fleetguard.segment.resolver import NameTable, Resolver
from fleetguard.segment.signature import verify_mud_signature
from fleetguard.segment.simulation import Simulation, simulate
from fleetguard.store.database import Database
from fleetguard.store.models import (
    DeviceRow,
    DeviceTypeRow,
    MudProfileRow,
    NetworkBindingRow,
    RulesetApplyRow,
    SegmentSettingRow,
)

__all__ = [
    "ApplyResult",
    "Binding",
    "SegmentationService",
    "SignaturePolicy",
    "StoredProfile",
    "parse_context",
]

_QUARANTINED_STATES = (State.QUARANTINED.value, State.DECOMMISSIONED.value)
_MAC = "0123456789abcdef:"
_MAX_CONTEXT_ENTRIES = 1024
# Flow-record detection logs at most this many violation events per call.
MAX_FLOW_EVENTS = 1000


@dataclass(frozen=True, slots=True)
class StoredProfile:
    """A stored MUD profile, parsed, with where it came from."""

    profile: MudProfile
    source: str
    signer: str | None
    actor: str
    added_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Binding:
    """A managed device's addresses."""

    device_id: str
    ipv4: ipaddress.IPv4Address | None
    ipv6: ipaddress.IPv6Address | None
    mac: str | None


@dataclass(frozen=True, slots=True)
class SignaturePolicy:
    """Whether profiles must be signed, and by whom (PEM certificates)."""

    required: bool
    trusted_pem: bytes


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What an apply (or a dry run) did: ``generation`` is 0 for a dry run."""

    generation: int
    digest: str
    devices: int
    profiles: int
    elements: Mapping[str, int]
    unprofiled: tuple[str, ...]
    unresolved: Mapping[str, tuple[str, ...]]
    quarantined: int
    seconds: float
    dry_run: bool


class SegmentationService:
    """Profiles, bindings, context and the ruleset of one installation."""

    _applied: tuple[CompiledFleet, list[IpAddress]] | None = None

    def __init__(
        self,
        database: Database,
        log: EventLog,
        inventory: Inventory,
        *,
        nft: NftCommand,
        resolver: Resolver,
        clock: Callable[[], dt.datetime],
        on_commit: Callable[[], object] | None = None,
    ) -> None:
        self._db, self._log, self._inventory, self._nft = database, log, inventory, nft
        self._names = NameTable(resolver)
        self._clock, self._on_commit = clock, on_commit
        self._lock = threading.Lock()
        self._seen_violations: set[tuple[str, int, str, int]] = set()

    # -- profiles -------------------------------------------------------------------------------

    def add_profile(
        self, document: bytes, *, actor: str, signature: bytes | None = None, source: str = "file"
    ) -> StoredProfile:
        """Parse, check the signature where required, and store a MUD profile (replacing its URL's).

        Raises ``MudInvalid``/``MudTooLarge`` (bad file) or ``MudSignatureInvalid``; nothing is
        stored then.
        """
        profile = parse_mud(document)
        now = self._clock()
        signer = self._verify(document, signature, now)
        with self._db.transaction() as session:
            row = session.get(MudProfileRow, profile.url)
            if row is None:
                row = MudProfileRow(url=profile.url)
                session.add(row)
            row.digest, row.document, row.signature, row.signer = profile.digest, document, signature, signer
            row.source, row.actor, row.added_at = source, actor, now
            self._log.append(
                session,
                NewEvent(actor=actor, subject=f"mud:{profile.url}"[:256], action="segment.profile_added",
                         data={"url": profile.url, "digest": profile.digest, "signer": signer or "",
                               "source": source, "aces": len(profile.aces)}),
                now=now,
            )  # fmt: skip
        publish_committed(self._on_commit)
        return StoredProfile(profile, source, signer, actor, now)

    def _verify(self, document: bytes, signature: bytes | None, now: dt.datetime) -> str | None:
        policy = self.signature_policy()
        if signature is None:
            if policy.required:
                raise MudSignatureInvalid(
                    "this installation requires signed MUD files and none was given",
                    hint="pass the detached CMS signature (the file at the profile's mud-signature URL)",
                )
            return None
        if not policy.trusted_pem:
            raise MudSignatureInvalid(
                "a signature was given but no trusted MUD signers are configured",
                hint="fleetguard segment signers set FILE.pem",
            )
        signer = verify_mud_signature(document, signature, policy.trusted_pem, now=now)
        return signer.subject.rfc4514_string()

    def missing_profiles(self) -> list[str]:
        """MUD URLs of devices (their own or their type's) that have no stored profile, sorted."""
        with self._db.reading() as session:
            own = session.scalars(
                select(DeviceRow.mud_url).where(DeviceRow.mud_url.is_not(None)).distinct()
            ).all()
            typed = session.scalars(
                select(DeviceTypeRow.mud_url).where(DeviceTypeRow.mud_url.is_not(None)).distinct()
            ).all()
            stored = set(session.scalars(select(MudProfileRow.url)).all())
        return sorted({url for url in (*own, *typed) if url} - stored)

    def profiles(self) -> list[StoredProfile]:
        """Every stored profile, by URL."""
        with self._db.reading() as session:
            rows = session.scalars(select(MudProfileRow).order_by(MudProfileRow.url)).all()
            return [_stored(row) for row in rows]

    def profile(self, url: str) -> StoredProfile:
        """One stored profile; raise :class:`ProfileNotFound`."""
        with self._db.reading() as session:
            row = session.get(MudProfileRow, url)
            if row is None:
                raise ProfileNotFound(
                    f"no MUD profile {url[:200]!r}", hint="fleetguard segment profile add FILE"
                )
            return _stored(row)

    def remove_profile(self, url: str, *, actor: str) -> None:
        """Remove a stored profile (its devices are denied everything at the next apply)."""
        now = self._clock()
        with self._db.transaction() as session:
            row = session.get(MudProfileRow, url)
            if row is None:
                raise ProfileNotFound(f"no MUD profile {url[:200]!r}")
            session.delete(row)
            self._log.append(
                session,
                NewEvent(
                    actor=actor,
                    subject=f"mud:{url}"[:256],
                    action="segment.profile_removed",
                    data={"url": url},
                ),
                now=now,
            )
        publish_committed(self._on_commit)

    # -- bindings -------------------------------------------------------------------------------

    def bind(
        self,
        device_id: str,
        *,
        actor: str,
        ipv4: str | None = None,
        ipv6: str | None = None,
        mac: str | None = None,
    ) -> Binding:
        """Record where a device is on the network; it is managed from the next apply.

        Raises ``DeviceNotFound``, ``InvalidInput`` (bad address, or one another device holds).
        """
        binding = Binding(device_id, _ipv4(ipv4), _ipv6(ipv6), _mac(mac))
        if binding.ipv4 is None and binding.ipv6 is None:
            raise InvalidInput("a binding needs an IPv4 or IPv6 address")
        self._inventory.get(device_id)
        now = self._clock()
        with self._db.transaction() as session:
            _require_free(session, binding)
            row = session.get(NetworkBindingRow, device_id) or NetworkBindingRow(device_id=device_id)
            row.ipv4 = None if binding.ipv4 is None else str(binding.ipv4)
            row.ipv6 = None if binding.ipv6 is None else str(binding.ipv6)
            row.mac, row.updated_at = binding.mac, now
            session.add(row)
            self._log.append(
                session,
                NewEvent(actor=actor, subject=device_event_subject(device_id), action="segment.device_bound",
                         data={"ipv4": row.ipv4 or "", "ipv6": row.ipv6 or "", "mac": row.mac or ""}),
                now=now,
            )  # fmt: skip
        publish_committed(self._on_commit)
        return binding

    def bindings(self) -> list[Binding]:
        """Every managed device's binding, by device id."""
        with self._db.reading() as session:
            rows = session.scalars(select(NetworkBindingRow).order_by(NetworkBindingRow.device_id)).all()
            return [Binding(r.device_id, _ipv4(r.ipv4), _ipv6(r.ipv6), r.mac) for r in rows]

    # -- context and signature policy -----------------------------------------------------------

    def set_context(self, context: FleetContext, *, actor: str) -> None:
        """Replace the fleet's MUD context (local networks, controllers)."""
        value = _context_json(context)
        self._set("context", value, actor=actor)

    def context(self) -> FleetContext:
        """The fleet's MUD context (empty when never set: abstract peers then allow nothing)."""
        return _context_from(self._get("context") or {})

    def set_signature_policy(self, policy: SignaturePolicy, *, actor: str) -> None:
        """Require signatures or not, and set the trusted signers (PEM certificates)."""
        try:
            certificates = x509.load_pem_x509_certificates(policy.trusted_pem) if policy.trusted_pem else []
        except ValueError as exc:
            raise InvalidInput(f"the trusted MUD signers are not PEM certificates: {exc}") from exc
        if policy.required and not certificates:
            raise InvalidInput("requiring signatures needs at least one trusted signer certificate")
        self._set(
            "signatures",
            {"required": policy.required, "trusted_pem": policy.trusted_pem.decode()},
            actor=actor,
        )

    def signature_policy(self) -> SignaturePolicy:
        """The signature policy (not required, no signers, when never set)."""
        value = self._get("signatures") or {}
        return SignaturePolicy(bool(value.get("required", False)), str(value.get("trusted_pem", "")).encode())

    def _reported_violations(self) -> set[tuple[str, int, str, int]]:
        value = self._get("violations_reported") or {}
        keys = value.get("keys", [])
        if not isinstance(keys, list):
            return set()
        return {
            (str(k[0]), int(k[1]), str(k[2]), int(k[3])) for k in keys if isinstance(k, list) and len(k) == 4
        }

    def _set(self, name: str, value: object, *, actor: str, log: bool = True) -> None:
        now = self._clock()
        with self._db.transaction() as session:
            row = session.get(SegmentSettingRow, name) or SegmentSettingRow(name=name)
            row.value, row.updated_at = value, now
            session.add(row)
            if not log:
                return
            self._log.append(
                session,
                NewEvent(actor=actor, subject="segment:settings", action="segment.settings_changed",
                         data={"name": name, "digest": _digest(json.dumps(value, sort_keys=True).encode())}),
                now=now,
            )  # fmt: skip
        publish_committed(self._on_commit)

    def _get(self, name: str) -> dict[str, object] | None:
        with self._db.reading() as session:
            row = session.get(SegmentSettingRow, name)
            return None if row is None else dict(row.value)

    # -- compile and apply ----------------------------------------------------------------------

    def compile(self, proposed: Sequence[MudProfile] = ()) -> tuple[CompiledFleet, list[IpAddress]]:
        """The fleet's compiled policy and the addresses to hold in quarantine.

        ``proposed`` profiles replace the stored profiles of the same MUD URL (for simulation);
        nothing is stored.
        """
        profiles = {stored.profile.url: stored.profile for stored in self.profiles()}
        profiles.update((profile.url, profile) for profile in proposed)
        devices, quarantined = self._devices()
        names = profile_names(profiles.values())
        self._names.refresh(names)
        fleet = compile_fleet(profiles, devices, self.context(), self._names.addresses())
        return fleet, quarantined

    def apply(self, *, actor: str, dry_run: bool = False) -> ApplyResult:
        """Compile, check with ``nft -c``, and (unless ``dry_run``) apply in one nft transaction.

        Raises ``RulesetRejected`` when nft refuses; the ruleset in force is then unchanged and no
        generation is recorded.
        """
        start = time.perf_counter()
        with self._lock:
            fleet, quarantined = self.compile()
            generation = 0 if dry_run else self._next_generation()
            script = render_fleet(
                fleet, quarantined=quarantined, comment=f"fleetguard generation {generation}"
            )
            digest = _digest(script.encode())
            self._nft.run(script, check_only=True)
            if not dry_run:
                self._nft.run(script)
            result = ApplyResult(
                generation=generation, digest=digest, devices=len(fleet.devices), profiles=len(fleet.classes),
                elements={k: len(v) for k, v in set_elements(fleet, quarantined=quarantined).items() if v},
                unprofiled=fleet.unprofiled, unresolved=fleet.unresolved, quarantined=len(quarantined),
                seconds=time.perf_counter() - start, dry_run=dry_run,
            )  # fmt: skip
            if not dry_run:
                self._record(result, actor)
                self._applied = (fleet, quarantined)
        return result

    def _next_generation(self) -> int:
        with self._db.reading() as session:
            return int(session.scalar(select(func.max(RulesetApplyRow.generation))) or 0) + 1

    def _record(self, result: ApplyResult, actor: str) -> None:
        now = self._clock()
        summary = {
            "devices": result.devices, "profiles": result.profiles, "elements": dict(result.elements),
            "unprofiled": len(result.unprofiled), "quarantined": result.quarantined,
        }  # fmt: skip
        with self._db.transaction() as session:
            session.add(RulesetApplyRow(generation=result.generation, digest=result.digest, summary=summary,
                                        actor=actor, applied_at=now))  # fmt: skip
            self._log.append(
                session,
                NewEvent(actor=actor, subject="segment:ruleset", action="segment.applied",
                         data={"generation": result.generation, "digest": result.digest,
                               "devices": result.devices, "quarantined": result.quarantined}),
                now=now,
            )  # fmt: skip
        publish_committed(self._on_commit)

    def history(self, *, limit: int = 20) -> list[tuple[int, str, dict[str, object], str, dt.datetime]]:
        """Applied generations, newest first: (generation, digest, summary, actor, applied_at)."""
        with self._db.reading() as session:
            rows = session.scalars(
                select(RulesetApplyRow).order_by(RulesetApplyRow.generation.desc()).limit(limit)
            ).all()
            return [(r.generation, r.digest, dict(r.summary), r.actor, r.applied_at) for r in rows]

    def refresh_names(self, *, actor: str) -> ElementUpdate:
        """Re-resolve due DNS names and apply the changed elements (no reload); return the update."""
        with self._lock:
            applied = self._applied
            if applied is None:
                raise SegmentError("nothing applied by this process yet", hint="fleetguard segment apply")
            old_fleet, quarantined = applied
            new_fleet, quarantined = self.compile()
            update = ElementUpdate.between(
                set_elements(old_fleet, quarantined=quarantined),
                set_elements(new_fleet, quarantined=quarantined),
            )
            if not update.empty:
                self._nft.run(update.script())
            self._applied = (new_fleet, quarantined)
        return update

    # -- quarantine -----------------------------------------------------------------------------

    def enforce_state(self, device_id: str, *, actor: str) -> bool:
        """Put the device's addresses in quarantine or take them out, from its inventory state.

        Returns True when the device is now held in quarantine. An element update, not a reload;
        idempotent. A device without a binding has nothing to enforce (False).
        """
        device = self._inventory.get(device_id)
        hold = device.state.value in _QUARANTINED_STATES
        addresses = self._hold(device_id, quarantine=hold, actor=actor, state=device.state.value)
        return hold and bool(addresses)

    def hold(self, device_id: str, *, quarantine: bool, actor: str) -> tuple[bool, str]:
        """Quarantine (or release) a device at the firewall and verify it by reading the set back.

        Returns (verified, detail). Used by the trust capability's continuous evaluation: a device
        the policy lets connect nowhere is cut off here too. A device the inventory holds in
        quarantine (or decommissioned) is never released by this call.
        """
        state = self._inventory.get(device_id).state.value
        if not quarantine and state in _QUARANTINED_STATES:
            quarantine = True
        addresses = self._hold(device_id, quarantine=quarantine, actor=actor, state=state)
        if not addresses:
            return True, "no network binding: nothing to enforce at the firewall"
        held = self.quarantined_addresses()
        wrong = [str(a) for a in addresses if (a in held) != quarantine]
        if wrong:
            return False, f"read back: {', '.join(wrong)} {'not ' if quarantine else ''}in quarantine"
        return True, "quarantined" if quarantine else "allowed"

    def quarantined_addresses(self) -> set[IpAddress]:
        """The addresses in the firewall's quarantine sets now (read from nft)."""
        counters = read_counters(self._nft, names=("quarantine4", "quarantine6"))
        return {ipaddress.ip_address(a) for values in counters.values() for a in values}

    def _hold(self, device_id: str, *, quarantine: bool, actor: str, state: str) -> list[IpAddress]:
        with self._db.reading() as session:
            row = session.get(NetworkBindingRow, device_id)
        if row is None:
            return []
        addresses: list[IpAddress] = [a for a in (_ipv4(row.ipv4), _ipv6(row.ipv6)) if a is not None]
        self._nft.run(quarantine_update(addresses, release=not quarantine))
        now = self._clock()
        with self._db.transaction() as session:
            self._log.append(
                session,
                NewEvent(actor=actor, subject=device_event_subject(device_id),
                         action="segment.quarantined" if quarantine else "segment.released",
                         data={"addresses": ",".join(map(str, addresses)), "state": state}),
                now=now,
            )  # fmt: skip
        publish_committed(self._on_commit)
        return addresses

    # -- detection ------------------------------------------------------------------------------

    def detect(self, *, actor: str = "fleetguard segment") -> list[tuple[str, Violation]]:
        """Read the enforcement point's violation sets; log each new one as ``segment.violation``.

        Returns the new (device id, violation) pairs; a violation already reported by this process
        is not reported again while it stays in the set.
        """
        by_address = {}
        for binding in self.bindings():
            for address in (binding.ipv4, binding.ipv6):
                if address is not None:
                    by_address[address] = binding.device_id
        found: list[tuple[str, Violation]] = []
        current: set[tuple[str, int, str, int]] = set()
        reported = self._seen_violations | self._reported_violations()
        for violation in read_violations(self._nft):
            key = (
                str(violation.source),
                violation.protocol,
                str(violation.destination),
                violation.destination_port,
            )
            current.add(key)
            device = by_address.get(violation.source) or by_address.get(violation.destination)
            if key not in reported and device is not None:
                found.append((device, violation))
        self._seen_violations = current
        if current != reported:
            # Remembered in the store too, so that a `fleetguard segment detect` in another process
            # does not report again what is still in the set (entries expire from it after an hour).
            self._set("violations_reported", {"keys": sorted(map(list, current))}, actor=actor, log=False)
        if found:
            self._log_violations(found, by_address, actor)
        return found

    def _log_violations(
        self, found: Sequence[tuple[str, Violation]], by_address: Mapping[IpAddress, str], actor: str
    ) -> None:
        now = self._clock()
        with self._db.transaction() as session:
            for device_id, v in found:
                direction = "from-device" if by_address.get(v.source) == device_id else "to-device"
                self._log.append(
                    session,
                    NewEvent(actor=actor, subject=device_event_subject(device_id), action="segment.violation",
                             data={"source": str(v.source), "destination": str(v.destination),
                                   "protocol": v.protocol, "destination_port": v.destination_port,
                                   "direction": direction}),
                    now=now,
                )  # fmt: skip
        publish_committed(self._on_commit)

    def simulate(self, flows: Iterable[Flow], *, proposed: Sequence[MudProfile] = ()) -> Simulation:
        """Judge ``flows`` under the policy in force, or with ``proposed`` profiles in place of the
        stored ones of the same MUD URL; nothing is stored or applied."""
        fleet, quarantined = self.compile(proposed)
        return simulate(fleet, flows, quarantined=quarantined)

    def counters(self) -> dict[str, dict[str, tuple[int, int]]]:
        """Per-address (packets, bytes) of the class, denied and quarantine sets in force."""
        return read_counters(self._nft)

    def detect_flows(self, flows: Iterable[Flow], *, actor: str, limit: int = MAX_FLOW_EVENTS) -> Simulation:
        """Judge recorded flows (a pcap's, a flow exporter's) against the policy in force.

        Each distinct blocked (device, source, destination, protocol, port) becomes one
        ``segment.violation`` event with ``"origin": "flows"``, at most ``limit`` per call (the
        rest are counted in the returned simulation, not logged).
        """
        fleet, quarantined = self.compile()
        result = simulate(fleet, flows, quarantined=quarantined)
        seen: dict[tuple[str, str, str, int, int], Flow] = {}
        for device_id, report in result.devices.items():
            for verdict in report.blocked:
                f = verdict.flow
                seen.setdefault((device_id, f.source, f.destination, f.protocol, f.destination_port), f)
        now = self._clock()
        with self._db.transaction() as session:
            for (device_id, source, destination, protocol, port), _flow in list(seen.items())[:limit]:
                self._log.append(
                    session,
                    NewEvent(actor=actor, subject=device_event_subject(device_id), action="segment.violation",
                             data={"source": source, "destination": destination, "protocol": protocol,
                                   "destination_port": port, "origin": "flows"}),
                    now=now,
                )  # fmt: skip
        publish_committed(self._on_commit)
        return result

    # -- fleet ------------------------------------------------------------------------------------

    def _devices(self) -> tuple[list[DeviceBinding], list[IpAddress]]:
        with self._db.reading() as session:
            rows = session.execute(
                select(NetworkBindingRow, DeviceRow.mud_url, DeviceRow.state, DeviceTypeRow.mud_url)
                .join(DeviceRow, DeviceRow.id == NetworkBindingRow.device_id)
                .outerjoin(DeviceTypeRow, DeviceTypeRow.id == DeviceRow.device_type_id)
                .order_by(NetworkBindingRow.device_id)
            ).all()
        devices: list[DeviceBinding] = []
        quarantined: list[IpAddress] = []
        for binding, own_url, state, type_url in rows:
            ipv4, ipv6 = _ipv4(binding.ipv4), _ipv6(binding.ipv6)
            devices.append(DeviceBinding(binding.device_id, own_url or type_url, ipv4, ipv6, binding.mac))
            if state in _QUARANTINED_STATES:
                quarantined.extend(a for a in (ipv4, ipv6) if a is not None)
        return devices, quarantined


def _stored(row: MudProfileRow) -> StoredProfile:
    return StoredProfile(_parsed(row.document), row.source, row.signer, row.actor, row.added_at)


@functools.lru_cache(maxsize=1024)
def _parsed(document: bytes) -> MudProfile:
    # Every compile (each apply, each DNS refresh in `up`) reads the stored profiles; a document's
    # parse depends on its bytes alone, so it is parsed once.
    return parse_mud(document)


def _require_free(session: Session, binding: Binding) -> None:
    for column, value in (
        (NetworkBindingRow.ipv4, binding.ipv4),
        (NetworkBindingRow.ipv6, binding.ipv6),
        (NetworkBindingRow.mac, binding.mac),
    ):
        if value is None:
            continue
        holder = session.scalar(
            select(NetworkBindingRow.device_id).where(
                column == str(value), NetworkBindingRow.device_id != binding.device_id
            )
        )
        if holder is not None:
            raise InvalidInput(
                f"{value} is bound to device {holder!r}", hint=f"fleetguard segment unbind {holder}"
            )


def _ipv4(value: str | None) -> ipaddress.IPv4Address | None:
    if not value:
        return None
    try:
        return ipaddress.IPv4Address(value)
    except ValueError as exc:
        raise InvalidInput(f"invalid IPv4 address {value[:60]!r}") from exc


def _ipv6(value: str | None) -> ipaddress.IPv6Address | None:
    if not value:
        return None
    try:
        return ipaddress.IPv6Address(value)
    except ValueError as exc:
        raise InvalidInput(f"invalid IPv6 address {value[:60]!r}") from exc


def _mac(value: str | None) -> str | None:
    if not value:
        return None
    mac = value.lower().replace("-", ":")
    parts = mac.split(":")
    if len(parts) != 6 or any(len(p) != 2 or not set(p) <= set(_MAC) for p in parts):
        raise InvalidInput(f"invalid MAC address {value[:40]!r}")
    return mac


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _context_json(context: FleetContext) -> dict[str, object]:
    entries = len(context.local_networks) + len(context.controllers) + len(context.my_controllers)
    if entries > _MAX_CONTEXT_ENTRIES:
        raise InvalidInput(f"the MUD context has {entries} entries; at most {_MAX_CONTEXT_ENTRIES}")
    return {
        "local_networks": [str(n) for n in context.local_networks],
        "controllers": {k: [str(a) for a in v] for k, v in sorted(context.controllers.items())},
        "my_controllers": {k: [str(a) for a in v] for k, v in sorted(context.my_controllers.items())},
    }


def _context_from(value: Mapping[str, object]) -> FleetContext:
    networks = value.get("local_networks", [])
    controllers = value.get("controllers", {})
    mine = value.get("my_controllers", {})
    if not isinstance(networks, list) or not isinstance(controllers, dict) or not isinstance(mine, dict):
        raise InvalidInput("the MUD context is malformed")
    return FleetContext(
        local_networks=tuple(_network(str(n)) for n in networks),
        controllers={str(k): _addresses(v) for k, v in controllers.items()},
        my_controllers={str(k): _addresses(v) for k, v in mine.items()},
    )


def _addresses(values: object) -> tuple[IpAddress, ...]:
    if not isinstance(values, list):
        raise InvalidInput("controller addresses must be a list")
    try:
        return tuple(ipaddress.ip_address(str(v)) for v in values)
    except ValueError as exc:
        raise InvalidInput(f"invalid controller address: {exc}") from exc


def _network(text: str) -> IpNetwork:
    try:
        return ipaddress.ip_network(text)
    except ValueError as exc:
        raise InvalidInput(f"invalid network {text[:60]!r} (use a prefix such as 10.0.0.0/8)") from exc


def parse_context(
    local_networks: Sequence[str],
    controllers: Mapping[str, Sequence[str]],
    my_controllers: Mapping[str, Sequence[str]],
) -> FleetContext:
    """Build a :class:`FleetContext` from text; raise ``InvalidInput`` naming a bad value."""
    return _context_from(
        {"local_networks": list(local_networks), "controllers": {k: list(v) for k, v in controllers.items()},
         "my_controllers": {k: list(v) for k, v in my_controllers.items()}}
    )  # fmt: skip
