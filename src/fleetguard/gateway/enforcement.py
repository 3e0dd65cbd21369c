"""The broker enforcement point: quarantine, release, revoke and apply, each verified by a probe.

Each operation is a short procedure against three small interfaces: the dynamic-security control
channel (:class:`~fleetguard.gateway.dynsec.DynsecControl`), the probe
(:class:`~fleetguard.gateway.probe.Prober`) and the broker process (:class:`CrlInstaller`, for the
CRL). It returns an :class:`EnforcementResult` and raises nothing for a broker that is down, refuses a
command or answers the probe unexpectedly: those are ``not_enforced`` with ``retryable`` set, and the
caller retries with backoff. ``enforced`` means the broker confirmed the state, twice:

1. *read-back*: ``getClient`` lists exactly the fleetguard roles the device should hold;
2. *probe*: a client with the device's identity (:mod:`fleetguard.gateway.probe`) gets ``not
   authorized`` (0x87) for a publish and a subscribe while the device is quarantined or revoked, and
   gets its publish accepted once released.

quarantine
    Make the device a dynamic-security client (``createClient`` without a password) and give it the
    deny-all quarantine role. Adding the role kicks every live connection of the device (verified, about
    1 ms); any reconnection is denied every publish, delivery and subscription.
release
    Remove the quarantine role (kicks the device, which reconnects with its normal rights).
revoke
    Quarantine first (a kick and deny-all take effect in milliseconds), then install the CRL and reload
    the broker, confirmed from its log (:meth:`~fleetguard.gateway.broker.MosquittoBroker.reload`), so a
    new handshake with the revoked certificate is refused. A reload alone would leave live sessions
    connected (verified). A CRL the gateway refuses leaves the device quarantined and the result
    ``not_enforced``, not retryable.
apply
    Make the device's fleetguard roles match a :class:`DeviceAccess`: its device role (see
    :func:`~fleetguard.gateway.roles.device_role`; none when the broker-wide patterns cover every grant),
    and the quarantine role when ``quarantined``. The quarantine role is added before anything else and
    removed last, so a device being quarantined never gets a new grant first, and a released one has
    its new rights before the deny-all goes. A device role the device no longer needs is taken from it
    and then deleted (it belongs to that device alone); a shared grants role of an earlier version is
    only taken from it. Nothing is sent when the roles already match (no kick).

With fleetguard's auth plugin (:mod:`fleetguard.gateway.plugin`) the same operations go to the plugin
instead of dynamic security: quarantine marks the device and kicks it, release unmarks it, apply sets
its type (one ``types/<type>/#`` grant; any other grant beyond the broker-wide patterns is refused)
and takes away any fleetguard role left in dynamic security, revoke is quarantine plus the CRL. The
state file is written before each command; the read-back is the plugin's ``get``, the probe the same.

Operations on one device are serialised (striped locks); different devices proceed in parallel.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import zlib
from collections.abc import Callable
from typing import Protocol

from fleetguard.errors import InvalidInput
from fleetguard.gateway.config import DEFAULT_GRANTS
from fleetguard.gateway.dynsec import DynsecControl
from fleetguard.gateway.errors import BrokerCommandFailed, BrokerUnavailable, CrlRejected, ProbeInconclusive
from fleetguard.gateway.model import (
    DeviceAccess,
    EnforcementAction,
    EnforcementResult,
    Outcome,
    TopicGrant,
)
from fleetguard.gateway.plugin import AuthPlugin, DeviceState, type_grant
from fleetguard.gateway.probe import Permission, ProbeObservation, Prober
from fleetguard.gateway.roles import (
    DEVICE_ROLE_PREFIX,
    GRANTS_ROLE_PREFIX,
    QUARANTINE_PRIORITY,
    QUARANTINE_ROLE,
    RoleAcl,
    device_role,
    quarantine_acls,
)
from fleetguard.gateway.topics import expand_pattern
from fleetguard.inventory.model import validate_device_id
from fleetguard.types import utc_now

__all__ = ["PROBE_LEVEL", "BrokerEnforcer", "CrlInstaller", "probe_topic"]

PROBE_LEVEL = "fleetguard-probe"
"""The last level of the topic a probe publishes on (agents ignore messages there)."""
_STRIPES = 64
_DEVICE_ROLE_PRIORITY = 0


class CrlInstaller(Protocol):
    """The broker process, as revocation needs it (:class:`~fleetguard.gateway.broker.MosquittoBroker`)."""

    def install_crl(self, crl_pem: bytes) -> None:
        """Check and write the crlfile; raise ``CrlRejected``."""

    def reload(self) -> None:
        """Make the broker read its files again, confirmed; raise ``BrokerUnavailable``."""


class _NotVerified(Exception):
    """The broker's answers contradict the requested state."""


def probe_topic(grants: tuple[TopicGrant, ...], device_id: str) -> str | None:
    """Return a topic the broker-wide ``grants`` let ``device_id`` publish on, or None.

    The first publishing grant without ``%c``, ``%u`` expanded, wildcard levels replaced by
    :data:`PROBE_LEVEL`: ``devices/%u/#`` gives ``devices/<id>/fleetguard-probe``.
    """
    for grant in grants:
        if grant.access.publishes and "%c" not in grant.filter.split("/"):
            levels = expand_pattern(grant.filter, username=device_id).split("/")
            return "/".join(PROBE_LEVEL if level in ("#", "+") else level for level in levels)
    return None


class BrokerEnforcer:
    """Enforces device access decisions at Mosquitto and verifies them."""

    def __init__(
        self,
        control: DynsecControl,
        prober: Prober,
        broker: CrlInstaller,
        *,
        grants: tuple[TopicGrant, ...] = DEFAULT_GRANTS,
        clock: Callable[[], dt.datetime] = utc_now,
        plugin: AuthPlugin | None = None,
    ) -> None:
        self._control = control
        self._plugin = plugin
        self._prober = prober
        self._broker = broker
        self._grants = grants
        self._clock = clock
        self._stripes = [threading.Lock() for _ in range(_STRIPES)]

    def prepare(self) -> None:
        """Make the broker's defaults deny (defer to the ACL file) and the quarantine role exact.

        Run once after the broker starts: ``dynsec.json`` may predate this version. Raises
        ``BrokerUnavailable`` or ``BrokerCommandFailed``.
        """
        self._control.deny_by_default()
        self._control.ensure_role(QUARANTINE_ROLE, quarantine_acls())

    # -- the operations ----------------------------------------------------------------------

    def quarantine(self, device_id: str) -> EnforcementResult:
        """Kick the device and deny it everything; verified by read-back and probe."""
        return self._run(device_id, EnforcementAction.QUARANTINE, lambda: self._quarantine(device_id))

    def release(self, device_id: str) -> EnforcementResult:
        """Lift the quarantine; verified by read-back and a probe whose publish is accepted."""
        return self._run(device_id, EnforcementAction.RELEASE, lambda: self._release(device_id))

    def revoke(self, device_id: str, crl_pem: bytes) -> EnforcementResult:
        """Quarantine the device, then install ``crl_pem`` and reload the broker, confirmed."""
        return self._run(device_id, EnforcementAction.REVOKE, lambda: self._revoke(device_id, crl_pem))

    def apply(self, access: DeviceAccess) -> EnforcementResult:
        """Make the device's roles match ``access``; verified by read-back and probe."""
        return self._run(access.device_id, EnforcementAction.APPLY, lambda: self._apply(access))

    # -- procedures --------------------------------------------------------------------------

    def _quarantine(self, device_id: str) -> str:
        if self._plugin is not None:
            self._plugin.quarantine(device_id)
            self._require_state(self._plugin, device_id, quarantined=True)
            done = "quarantined in the auth plugin, live connections kicked"
            return f"{done}; {self._verify(device_id, quarantined=True)}"
        self._control.ensure_client(device_id)
        done = self._add_quarantine(device_id)
        self._require_roles(device_id, quarantined=True, role=None, exact=False)
        return f"{done}; {self._verify(device_id, quarantined=True)}"

    def _add_quarantine(self, device_id: str) -> str:
        current = self._control.client_roles(device_id)
        if current is not None and QUARANTINE_ROLE in current.roles:
            return "already quarantined"
        self._control.add_client_role(device_id, QUARANTINE_ROLE, QUARANTINE_PRIORITY)
        return "quarantine role added, live connections kicked"

    def _release(self, device_id: str) -> str:
        if self._plugin is not None:
            held = self._plugin.state(device_id)
            if held.quarantined:
                self._plugin.set_access(device_id, DeviceState(False, held.device_type, held.access))
            done = "released in the auth plugin" if held.quarantined else "not quarantined"
            self._require_state(self._plugin, device_id, quarantined=False)
            return f"{done}; {self._verify(device_id, quarantined=False)}"
        current = self._control.client_roles(device_id)
        if current is None or QUARANTINE_ROLE not in current.roles:
            done = "not quarantined"
        else:
            self._control.remove_client_role(device_id, QUARANTINE_ROLE)
            done = "quarantine role removed, live connections kicked"
        self._require_roles(device_id, quarantined=False, role=None, exact=False)
        return f"{done}; {self._verify(device_id, quarantined=False)}"

    def _revoke(self, device_id: str, crl_pem: bytes) -> str:
        if self._plugin is not None:
            self._plugin.quarantine(device_id)
            done = "quarantined in the auth plugin, live connections kicked"
        else:
            self._control.ensure_client(device_id)
            done = self._add_quarantine(device_id)
        try:
            self._broker.install_crl(crl_pem)
        except CrlRejected as exc:
            raise CrlRejected(f"{done}, but the CRL was refused: {exc.message}", hint=exc.hint) from exc
        self._broker.reload()
        if self._plugin is not None:
            self._require_state(self._plugin, device_id, quarantined=True)
        else:
            self._require_roles(device_id, quarantined=True, role=None, exact=False)
        return f"{done}; CRL installed, reload confirmed; {self._verify(device_id, quarantined=True)}"

    def _apply(self, access: DeviceAccess) -> str:
        if self._plugin is not None:
            return self._apply_plugin(self._plugin, access)
        device_id = access.device_id
        role = device_role(access.grants, self._grants, device_id)
        wanted = {
            name
            for name in (role[0] if role else None, QUARANTINE_ROLE if access.quarantined else None)
            if name
        }
        current = self._control.client_roles(device_id)
        held = {name for name in (current.roles if current else {}) if _ours(name)}
        if held == wanted:
            changes = "roles already match"
        else:
            changes = self._change_roles(
                device_id, role, held, access.quarantined, exists=current is not None
            )
        self._require_roles(
            device_id, quarantined=access.quarantined, role=role[0] if role else None, exact=True
        )
        return f"{changes}; {self._verify(device_id, quarantined=access.quarantined)}"

    def _apply_plugin(self, plugin: AuthPlugin, access: DeviceAccess) -> str:
        device_id = access.device_id
        held_type = type_grant(access.grants, self._grants, device_id)  # InvalidInput: refused
        wanted = DeviceState(
            access.quarantined, held_type[0] if held_type else None, held_type[1] if held_type else None
        )
        if plugin.state(device_id) == wanted:
            changes = "auth plugin already holds it"
        else:
            plugin.set_access(device_id, wanted)
            changes = "auth plugin changed"
        self._drop_dynsec_roles(device_id)
        self._require_state(plugin, device_id, quarantined=access.quarantined, exact=wanted)
        return f"{changes}; {self._verify(device_id, quarantined=access.quarantined)}"

    def _drop_dynsec_roles(self, device_id: str) -> None:
        # Roles from dynamic-security mode would still decide what the plugin defers (a former type's
        # topics); the deny-all role stays harmless but goes too, so the broker holds one truth.
        current = self._control.client_roles(device_id)
        for name in sorted(name for name in (current.roles if current else {}) if _ours(name)):
            self._control.remove_client_role(device_id, name)
            if name.startswith(DEVICE_ROLE_PREFIX):
                self._control.delete_role(name)

    def _change_roles(
        self,
        device_id: str,
        role: tuple[str, tuple[RoleAcl, ...]] | None,
        held: set[str],
        quarantined: bool,
        *,
        exists: bool,
    ) -> str:
        if not exists:
            self._control.ensure_client(device_id)
        if quarantined and QUARANTINE_ROLE not in held:
            self._control.add_client_role(device_id, QUARANTINE_ROLE, QUARANTINE_PRIORITY)
        if role is not None and role[0] not in held:
            name, acls = role
            self._control.ensure_role(name, acls)
            self._control.add_client_role(device_id, name, _DEVICE_ROLE_PRIORITY)
        stale = {name for name in held if name != QUARANTINE_ROLE and (role is None or name != role[0])}
        for name in sorted(stale):
            self._control.remove_client_role(device_id, name)
            if name.startswith(DEVICE_ROLE_PREFIX):
                self._control.delete_role(name)
        if not quarantined and QUARANTINE_ROLE in held:
            self._control.remove_client_role(device_id, QUARANTINE_ROLE)
        return "roles changed, live connections kicked"

    # -- verification ------------------------------------------------------------------------

    def _require_state(
        self, plugin: AuthPlugin, device_id: str, *, quarantined: bool, exact: DeviceState | None = None
    ) -> None:
        held = plugin.state(device_id)
        if held.quarantined is not quarantined:
            raise _NotVerified(f"read-back: the auth plugin holds {device_id} quarantined={held.quarantined}")
        if exact is not None and held != exact:
            raise _NotVerified(f"read-back: the auth plugin holds {held} for {device_id}, expected {exact}")

    def _require_roles(self, device_id: str, *, quarantined: bool, role: str | None, exact: bool) -> None:
        current = self._control.client_roles(device_id)
        roles = dict(current.roles) if current is not None else {}
        if quarantined and roles.get(QUARANTINE_ROLE) != QUARANTINE_PRIORITY:
            raise _NotVerified(f"read-back: {device_id} does not hold {QUARANTINE_ROLE} at its priority")
        if not quarantined and QUARANTINE_ROLE in roles:
            raise _NotVerified(f"read-back: {device_id} still holds {QUARANTINE_ROLE}")
        if exact:
            wanted = {name for name in (role, QUARANTINE_ROLE if quarantined else None) if name}
            held = {name for name in roles if _ours(name)}
            if held != wanted:
                raise _NotVerified(f"read-back: {device_id} holds {sorted(held)}, expected {sorted(wanted)}")

    def _verify(self, device_id: str, *, quarantined: bool) -> str:
        topic = probe_topic(self._grants, device_id)
        if topic is None:
            if not quarantined:
                return "read-back confirmed; no broker-wide grant to probe a publish with"
            topic = f"devices/{device_id}/{PROBE_LEVEL}"
        seen = self._prober.probe(device_id, topic)
        if quarantined and (seen.publish is not Permission.DENIED or seen.subscribe is not Permission.DENIED):
            raise _NotVerified(f"probe: the broker still lets {device_id} act ({_answers(seen)})")
        if not quarantined and seen.publish is not Permission.ALLOWED:
            raise _NotVerified(f"probe: the broker denies {device_id} its own topic ({_answers(seen)})")
        return f"read-back confirmed; probe {_answers(seen)}"

    # -- the frame ---------------------------------------------------------------------------

    def _run(
        self, device_id: str, action: EnforcementAction, procedure: Callable[[], str]
    ) -> EnforcementResult:
        started = time.monotonic()

        def result(outcome: Outcome, detail: str, *, retryable: bool = False) -> EnforcementResult:
            return EnforcementResult(
                device_id=device_id, action=action, outcome=outcome, verified=outcome is Outcome.ENFORCED,
                detail=detail, at=self._clock(), retryable=retryable, elapsed_s=time.monotonic() - started,
            )  # fmt: skip

        try:
            validate_device_id(device_id)
            with self._stripes[zlib.crc32(device_id.encode()) % _STRIPES]:
                detail = procedure()
        except InvalidInput as exc:
            return result(Outcome.NOT_ENFORCED, f"refused: {exc}")
        except (BrokerUnavailable, BrokerCommandFailed, ProbeInconclusive) as exc:
            return result(Outcome.NOT_ENFORCED, f"{type(exc).__name__}: {exc}", retryable=True)
        except _NotVerified as exc:
            return result(Outcome.NOT_ENFORCED, f"not verified: {exc}", retryable=True)
        return result(Outcome.ENFORCED, detail)


def _ours(rolename: str) -> bool:
    return rolename == QUARANTINE_ROLE or rolename.startswith((DEVICE_ROLE_PREFIX, GRANTS_ROLE_PREFIX))


def _answers(seen: ProbeObservation) -> str:
    return (
        f"publish {seen.publish_reason:#04x} ({seen.publish}), subscribe {seen.subscribe_reason:#04x} "
        f"({seen.subscribe}) in {seen.elapsed_s * 1000:.0f} ms"
    )
