"""The stored (JSON) form of a rollout policy and of a campaign's target query, and the default waves.

The database keeps :class:`~fleetguard.ota.rollout.RolloutPolicy` and
:class:`~fleetguard.ota.rollout.Target` as JSON; these functions are the only translation, and the
parse side re-runs every check of the frozen values (a row edited by hand is refused, not trusted).
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from fleetguard.ota.rollout import (
    MaintenanceWindow,
    Phase,
    PhaseTimeouts,
    PlanInvalid,
    RetryPolicy,
    RolloutPolicy,
    Target,
    WaveSpec,
)
from fleetguard.ota.scope import PPM

__all__ = [
    "DEFAULT_WAVES",
    "default_policy",
    "policy_from_dict",
    "policy_to_dict",
    "target_from_dict",
    "target_to_dict",
]

_MAX_SECONDS = 100 * 365 * 86400  # a century: far beyond any wave, phase or retry setting

DEFAULT_WAVES: tuple[tuple[str, int], ...] = (("canary", 10_000), ("early", 100_000), ("broad", PPM))
"""Canary 1 %, then up to 10 %, then everyone (hawkBit's and Mender's usual first phases)."""


def default_policy(
    *,
    waves: Sequence[tuple[str, int]] = DEFAULT_WAVES,
    success_ppm: int = 950_000,
    error_ppm: int = 50_000,
    abort_ppm: int | None = None,
    soak: dt.timedelta = dt.timedelta(0),
    deadline: dt.timedelta | None = None,
    windows: Sequence[str] = (),
    max_retries: int = 3,
    salt: str | None = None,
) -> RolloutPolicy:
    """Build a policy with the same thresholds for every wave; raise :class:`PlanInvalid`."""
    specs = tuple(
        WaveSpec(
            name=name, cumulative_ppm=size, success_threshold_ppm=success_ppm, error_threshold_ppm=error_ppm,
            abort_threshold_ppm=abort_ppm, soak=soak, deadline=deadline,
        )
        for name, size in waves
    )  # fmt: skip
    return RolloutPolicy(
        salt=salt or secrets.token_hex(16),
        waves=specs,
        windows=tuple(MaintenanceWindow.parse(text) for text in windows),
        retry=RetryPolicy(max_retries=max_retries),
    )


def policy_to_dict(policy: RolloutPolicy) -> dict[str, Any]:
    """Return the JSON object stored for ``policy``."""
    return {
        "salt": policy.salt,
        "waves": [
            {
                "name": wave.name, "cumulative_ppm": wave.cumulative_ppm,
                "success_threshold_ppm": wave.success_threshold_ppm,
                "error_threshold_ppm": wave.error_threshold_ppm,
                "abort_threshold_ppm": wave.abort_threshold_ppm,
                "soak_s": wave.soak.total_seconds(),
                "deadline_s": None if wave.deadline is None else wave.deadline.total_seconds(),
            }
            for wave in policy.waves
        ],
        "windows": [str(window) for window in policy.windows],
        "timeouts_s": {phase.value: policy.timeouts.of(phase).total_seconds() for phase in Phase},
        "retry": {
            "max_retries": policy.retry.max_retries, "base_s": policy.retry.base.total_seconds(),
            "cap_s": policy.retry.cap.total_seconds(), "jitter_ppm": policy.retry.jitter_ppm,
        },
    }  # fmt: skip


def policy_from_dict(value: Mapping[str, Any]) -> RolloutPolicy:
    """Parse a stored policy; raise :class:`PlanInvalid` when anything is missing or out of range."""
    try:
        timeouts, retry = value["timeouts_s"], value["retry"]
        return RolloutPolicy(
            salt=str(value["salt"]),
            waves=tuple(_wave(wave) for wave in value["waves"]),
            windows=tuple(MaintenanceWindow.parse(str(text)) for text in value["windows"]),
            timeouts=PhaseTimeouts(
                offer=_seconds(timeouts["offer"]), download=_seconds(timeouts["download"]),
                install=_seconds(timeouts["install"]), activate=_seconds(timeouts["activate"]),
            ),
            retry=RetryPolicy(
                max_retries=int(retry["max_retries"]), base=_seconds(retry["base_s"]),
                cap=_seconds(retry["cap_s"]), jitter_ppm=int(retry["jitter_ppm"]),
            ),
        )  # fmt: skip
    except (KeyError, TypeError, ValueError) as exc:
        raise PlanInvalid(f"stored rollout policy is malformed: {exc!r}"[:300]) from exc


def _wave(value: Mapping[str, Any]) -> WaveSpec:
    abort, deadline = value["abort_threshold_ppm"], value["deadline_s"]
    return WaveSpec(
        name=str(value["name"]), cumulative_ppm=int(value["cumulative_ppm"]),
        success_threshold_ppm=int(value["success_threshold_ppm"]),
        error_threshold_ppm=int(value["error_threshold_ppm"]),
        abort_threshold_ppm=None if abort is None else int(abort), soak=_seconds(value["soak_s"]),
        deadline=None if deadline is None else _seconds(deadline),
    )  # fmt: skip


def _seconds(value: object) -> dt.timedelta:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"{value!r} is not a number of seconds")
    if not abs(value) <= _MAX_SECONDS:  # also NaN; timedelta itself overflows near 2.7e12 days
        raise ValueError(f"{value!r} seconds is out of range")
    return dt.timedelta(seconds=value)


def target_to_dict(target: Target) -> dict[str, Any]:
    """Return the JSON object stored for ``target``."""
    return {
        "device_type": target.device_type, "site": target.site, "labels": dict(target.labels),
        "firmware_version": target.firmware_version, "firmware_version_not": target.firmware_version_not,
    }  # fmt: skip


def target_from_dict(value: Mapping[str, Any]) -> Target:
    """Parse a stored target; raise :class:`PlanInvalid`."""
    try:
        labels = _mapping(value["labels"])
        return Target(
            device_type=_optional(value["device_type"]), site=_optional(value["site"]),
            labels={str(k): str(v) for k, v in labels.items()},
            firmware_version=_optional(value["firmware_version"]),
            firmware_version_not=_optional(value["firmware_version_not"]),
        )  # fmt: skip
    except (KeyError, TypeError) as exc:
        raise PlanInvalid(f"stored campaign target is malformed: {exc!r}"[:300]) from exc


def _mapping(value: object) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise TypeError("labels must be an object")
    return value


def _optional(value: object) -> str | None:
    return None if value is None else str(value)
