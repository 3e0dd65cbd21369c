"""The stored form of rollout policies and campaign targets: what is written parses back to the same
value, and a stored row that is malformed (missing keys, wrong types, values out of range) raises
PlanInvalid and nothing else."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetguard.ota.policy import (
    DEFAULT_WAVES,
    default_policy,
    policy_from_dict,
    policy_to_dict,
    target_from_dict,
    target_to_dict,
)
from fleetguard.ota.rollout import (
    MaintenanceWindow,
    PhaseTimeouts,
    PlanInvalid,
    RetryPolicy,
    RolloutPolicy,
    Target,
    WaveSpec,
)

SALT = "0123456789abcdef"


def _stored() -> dict[str, Any]:
    return policy_to_dict(default_policy(salt=SALT, windows=["Mon-Fri 01:00-05:00 UTC"]))


def test_the_default_policy_has_three_waves_with_the_same_thresholds() -> None:
    policy = default_policy(salt=SALT)

    assert DEFAULT_WAVES == (("canary", 10_000), ("early", 100_000), ("broad", 1_000_000))
    assert policy == RolloutPolicy(
        salt=SALT,
        waves=(
            WaveSpec("canary", 10_000, 950_000, 50_000),
            WaveSpec("early", 100_000, 950_000, 50_000),
            WaveSpec("broad", 1_000_000, 950_000, 50_000),
        ),
        retry=RetryPolicy(max_retries=3),
    )
    assert len(default_policy().salt) == 32
    assert default_policy().salt != default_policy().salt


def test_a_default_policy_with_bad_values_is_refused() -> None:
    with pytest.raises(PlanInvalid, match=r"wave sizes are cumulative and must increase strictly"):
        default_policy(waves=[("a", 500_000), ("b", 500_000), ("c", 1_000_000)], salt=SALT)
    with pytest.raises(PlanInvalid, match=r"is not like 'Mon-Fri 01:00-05:00 UTC'"):
        default_policy(windows=["whenever"], salt=SALT)
    with pytest.raises(PlanInvalid, match=r"the salt must be 16 to 64 lower-case hex digits"):
        default_policy(salt="SALT")


def test_the_stored_form_is_plain_json() -> None:
    assert _stored() == {
        "salt": SALT,
        "waves": [
            {
                "name": name, "cumulative_ppm": size, "success_threshold_ppm": 950_000,
                "error_threshold_ppm": 50_000, "abort_threshold_ppm": None, "soak_s": 0.0, "deadline_s": None,
            }
            for name, size in DEFAULT_WAVES
        ],
        "windows": ["Mon-Fri 01:00-05:00 UTC"],
        "timeouts_s": {"offer": 86400.0, "download": 7200.0, "install": 1800.0, "activate": 900.0},
        "retry": {"max_retries": 3, "base_s": 300.0, "cap_s": 14400.0, "jitter_ppm": 500_000},
    }  # fmt: skip


WINDOWS = ["daily 00:00-24:00 UTC", "Sat 22:00-02:00 UTC", "Mon,Wed-Fri 01:30-05:00 UTC"]
SECONDS = st.integers(min_value=1, max_value=30 * 86400).map(lambda s: dt.timedelta(seconds=s))


@st.composite
def policies(draw: st.DrawFn) -> RolloutPolicy:
    sizes = [*sorted(draw(st.sets(st.integers(1, 999_999), max_size=4))), 1_000_000]
    waves = []
    for index, size in enumerate(sizes):
        error = draw(st.integers(1, 1_000_000))
        waves.append(
            WaveSpec(
                name=f"w{index}", cumulative_ppm=size, success_threshold_ppm=draw(st.integers(1, 1_000_000)),
                error_threshold_ppm=error,
                abort_threshold_ppm=draw(st.none() | st.integers(error, 1_000_000)),
                soak=draw(st.integers(0, 90 * 86400).map(lambda s: dt.timedelta(seconds=s))),
                deadline=draw(st.none() | SECONDS),
            )
        )  # fmt: skip
    base = draw(SECONDS)
    return RolloutPolicy(
        salt=draw(st.from_regex(r"[0-9a-f]{16,64}", fullmatch=True)),
        waves=tuple(waves),
        windows=tuple(
            MaintenanceWindow.parse(text)
            for text in draw(st.lists(st.sampled_from(WINDOWS), unique=True))
        ),
        timeouts=PhaseTimeouts(draw(SECONDS), draw(SECONDS), draw(SECONDS), draw(SECONDS)),
        retry=RetryPolicy(
            max_retries=draw(st.integers(0, 20)), base=base, cap=max(base, draw(SECONDS)),
            jitter_ppm=draw(st.integers(0, 999_999)),
        ),
    )  # fmt: skip


@given(policies())
def test_a_policy_round_trips(policy: RolloutPolicy) -> None:
    assert policy_from_dict(policy_to_dict(policy)) == policy


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=8,
)
PATHS = [
    ("salt",), ("waves",), ("waves", 0), ("waves", 0, "name"), ("waves", 0, "cumulative_ppm"),
    ("waves", 2, "cumulative_ppm"), ("waves", 0, "error_threshold_ppm"), ("waves", 0, "abort_threshold_ppm"),
    ("waves", 0, "soak_s"), ("waves", 1, "deadline_s"), ("windows",), ("windows", 0), ("timeouts_s",),
    ("timeouts_s", "offer"), ("retry",), ("retry", "max_retries"), ("retry", "base_s"), ("retry", "cap_s"),
    ("retry", "jitter_ppm"),
]  # fmt: skip


@given(st.sampled_from(PATHS), JSON)
def test_a_tampered_policy_parses_or_raises_plan_invalid(path: tuple[str | int, ...], value: object) -> None:
    stored = copy.deepcopy(_stored())
    parent: Any = stored
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value

    try:
        parsed = policy_from_dict(stored)
    except PlanInvalid:
        return
    assert isinstance(parsed, RolloutPolicy)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("salt",), "NOT-HEX", r"the salt must be 16 to 64 lower-case hex digits"),
        (("waves",), [], r"a rollout has 1 to 32 waves, not 0"),
        (("waves", 2, "cumulative_ppm"), 999_999, r"the last wave must reach 1000000 ppm"),
        (("waves", 0, "error_threshold_ppm"), 0, r"wave canary: error threshold 0 ppm is outside"),
        (("waves", 0, "abort_threshold_ppm"), 1, r"the abort threshold must be in error threshold"),
        (
            ("waves", 0, "soak_s"),
            True,
            r"stored rollout policy is malformed: TypeError\('True is not a number",
        ),
        (("waves", 0, "soak_s"), "60", r"stored rollout policy is malformed: TypeError"),
        (("waves", 1, "deadline_s"), 0, r"wave early: the deadline must be more than 0"),
        (("waves", 0, "cumulative_ppm"), "many", r"stored rollout policy is malformed: ValueError"),
        (("windows", 0), "Funday 01:00-02:00", r"is not like 'Mon-Fri 01:00-05:00 UTC'|is not a day"),
        (("timeouts_s", "offer"), -5, r"the offer timeout must be more than 0"),
        (("retry", "max_retries"), 21, r"max_retries must be in 0..20"),
        (("retry", "cap_s"), 1, r"the retry cap is shorter than the base delay"),
        (("retry", "jitter_ppm"), None, r"stored rollout policy is malformed: TypeError"),
    ],
)
def test_a_malformed_stored_policy_is_refused(
    path: tuple[str | int, ...], value: object, message: str
) -> None:
    stored = _stored()
    parent: Any = stored
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value

    with pytest.raises(PlanInvalid, match=message):
        policy_from_dict(stored)


@pytest.mark.parametrize("missing", ["salt", "waves", "windows", "timeouts_s", "retry"])
def test_a_stored_policy_missing_a_key_is_refused(missing: str) -> None:
    stored = _stored()
    del stored[missing]

    with pytest.raises(PlanInvalid, match=rf"stored rollout policy is malformed: KeyError\('{missing}'\)"):
        policy_from_dict(stored)


# --- targets -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        Target(firmware_version_not="2.0"),
        Target(
            device_type="cam", site="berlin", labels={"ring": "beta", "floor": "2"}, firmware_version="1.0"
        ),
    ],
)
def test_a_target_round_trips(target: Target) -> None:
    assert target_from_dict(target_to_dict(target)) == target


def test_the_stored_target_is_plain_json() -> None:
    assert target_to_dict(Target(site="berlin", labels={"ring": "beta"})) == {
        "device_type": None, "site": "berlin", "labels": {"ring": "beta"}, "firmware_version": None,
        "firmware_version_not": None,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("stored", "message"),
    [
        (
            {"device_type": None, "site": None, "labels": {}, "firmware_version": None},
            r"KeyError\('firmware_version_not'\)",
        ),
        (
            {
                "device_type": None,
                "site": None,
                "labels": [],
                "firmware_version": None,
                "firmware_version_not": "1",
            },
            r"TypeError\('labels must be an object'\)",
        ),
        (
            {
                "device_type": None,
                "site": None,
                "labels": {},
                "firmware_version": None,
                "firmware_version_not": None,
            },
            r"a target needs at least one criterion",
        ),
        (
            {
                "device_type": "",
                "site": None,
                "labels": {},
                "firmware_version": None,
                "firmware_version_not": None,
            },
            r"a target criterion must not be empty",
        ),
    ],
)
def test_a_malformed_stored_target_is_refused(stored: dict[str, Any], message: str) -> None:
    with pytest.raises(PlanInvalid, match=message):
        target_from_dict(stored)


@pytest.mark.parametrize("seconds", [-86_399_999_913_601, 1e300, float("nan"), float("inf")])
def test_a_duration_beyond_any_setting_is_refused_not_an_overflow(seconds: float) -> None:
    stored = copy.deepcopy(_stored())
    stored["waves"][0]["soak_s"] = seconds
    with pytest.raises(PlanInvalid, match="stored rollout policy is malformed"):
        policy_from_dict(stored)
