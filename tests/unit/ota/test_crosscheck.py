"""The device's decision: the director's entry against the image repository's (Uptane 5.4.4.2)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest

from fleetguard.ota.crosscheck import Assignment, ImageRelease, TargetEntry, image_release, verify_assignment
from fleetguard.ota.errors import ScopeViolation, UpdateRejected
from fleetguard.ota.scope import PPM, RolloutScope, device_bucket

NOW = dt.datetime(2030, 1, 2, tzinfo=dt.UTC)
SHA = "ab" * 32
PATH = "hw-a/fw-2.bin"
SALT = "0123456789abcdef"


def _scope(**changes: Any) -> RolloutScope:
    fields: dict[str, Any] = {
        "campaign": "spring",
        "fraction_ppm": PPM,
        "salt": SALT,
        "hardware_ids": ("hw-a",),
        "not_before": dt.datetime(2030, 1, 1, tzinfo=dt.UTC),
        "not_after": dt.datetime(2030, 1, 8, tzinfo=dt.UTC),
    }
    fields.update(changes)
    return RolloutScope(**fields)


def _director(**fleetguard: object) -> TargetEntry:
    fields: dict[str, object] = {
        "device": "dev-1",
        "hardware_id": "hw-a",
        "release_counter": 7,
        "campaign": "spring",
    }
    fields.update(fleetguard)
    return TargetEntry(
        PATH, 100, {"sha256": SHA}, {"fleetguard": {k: v for k, v in fields.items() if v is not None}}
    )


def _image(scopes: list[object] | None = None, **fleetguard: object) -> TargetEntry:
    fields: dict[str, object] = {
        "release": "2.0",
        "release_counter": 7,
        "hardware_ids": ["hw-a", "hw-b"],
        "scopes": [_scope().to_custom()] if scopes is None else scopes,
    }
    fields.update(fleetguard)
    return TargetEntry(
        PATH, 100, {"sha256": SHA}, {"fleetguard": {k: v for k, v in fields.items() if v is not None}}
    )


def _verify(
    director: TargetEntry | None = None, image: TargetEntry | None = None, **kwargs: Any
) -> Assignment:
    arguments: dict[str, Any] = {
        "device_id": "dev-1",
        "hardware_id": "hw-a",
        "installed_counter": 6,
        "now": NOW,
    }
    arguments.update(kwargs)
    return verify_assignment(director or _director(), image or _image(), **arguments)


def test_happy_path_returns_the_assignment() -> None:
    assert _verify(_director(delta="hw-a/fw-1-2.delta")) == Assignment(
        path=PATH,
        length=100,
        sha256=SHA,
        release="2.0",
        release_counter=7,
        hardware_id="hw-a",
        campaign="spring",
        delta_path="hw-a/fw-1-2.delta",
    )
    assert _verify().delta_path is None
    assert _verify(_director(delta=5)).delta_path is None


# Rule 1: the director's entry names this device and its hardware id.


def test_entry_for_another_device_is_rejected() -> None:
    with pytest.raises(UpdateRejected, match=f"director metadata for {PATH} names another device"):
        _verify(_director(device="dev-2"))
    with pytest.raises(UpdateRejected, match="names another device"):
        _verify(_director(device=None))


def test_entry_for_other_hardware_is_rejected() -> None:
    with pytest.raises(UpdateRejected, match=f"director assigns {PATH} to hardware 'hw-b'"):
        _verify(_director(hardware_id="hw-b"))


def test_director_entry_without_fleetguard_fields_is_rejected() -> None:
    entry = TargetEntry(PATH, 100, {"sha256": SHA}, {})
    with pytest.raises(UpdateRejected, match=f"director entry {PATH} has no fleetguard fields"):
        _verify(entry)
    with pytest.raises(UpdateRejected, match=r"director entry .* has no fleetguard fields"):
        _verify(TargetEntry(PATH, 100, {"sha256": SHA}, {"fleetguard": ["not", "a", "map"]}))


# Rule 2: same path, length and SHA-256 (arbitrary image, mix-and-match).


@pytest.mark.parametrize(
    "image",
    [
        dataclasses.replace(_image(), length=101),
        dataclasses.replace(_image(), hashes={"sha256": "cd" * 32}),
        dataclasses.replace(_image(), path="hw-a/fw-1.bin"),
    ],
)
def test_image_must_match_hash_length_and_path(image: TargetEntry) -> None:
    with pytest.raises(
        UpdateRejected,
        match=f"the image repository does not sign {PATH} with that hash and length "
        r"\(arbitrary or mix-and-match image from the director\)",
    ):
        _verify(image=image)


@pytest.mark.parametrize(
    "hashes", [{}, {"sha512": "ab" * 64}, {"sha256": "AB" * 32}, {"sha256": "ab" * 31}, {"sha256": 5}]
)
def test_entries_without_a_sha256_are_rejected(hashes: dict[str, Any]) -> None:
    with pytest.raises(UpdateRejected, match=f"director entry {PATH} has no SHA-256"):
        _verify(dataclasses.replace(_director(), hashes=hashes))
    with pytest.raises(UpdateRejected, match=f"image entry {PATH} has no SHA-256"):
        _verify(image=dataclasses.replace(_image(), hashes=hashes))


# Rule 3: the image entry lists the hardware id and the same release counter.


def test_image_not_approved_for_the_hardware_is_rejected() -> None:
    with pytest.raises(UpdateRejected, match=f"the image repository does not approve {PATH} for hw-a"):
        _verify(image=_image(hardware_ids=["hw-b"]))


def test_release_counter_must_agree() -> None:
    with pytest.raises(
        UpdateRejected, match="release counter 8 from the director differs from the image repository's 7"
    ):
        _verify(_director(release_counter=8))
    with pytest.raises(UpdateRejected, match="release counter None from the director differs"):
        _verify(_director(release_counter=None))


# Rule 4: anti-rollback.


@pytest.mark.parametrize("installed", [7, 8, 100])
def test_rollback_and_reinstall_are_refused(installed: int) -> None:
    with pytest.raises(
        UpdateRejected,
        match=rf"release counter 7 is not above the installed {installed} \(rollback refused\)",
    ):
        _verify(installed_counter=installed)


def test_one_above_installed_is_accepted() -> None:
    assert _verify(installed_counter=6).release_counter == 7


# Rule 5: the offline-signed scope covers the device now.


def test_no_signed_scope_for_the_campaign() -> None:
    with pytest.raises(ScopeViolation, match=f"no signed scope for campaign 'autumn' of {PATH}"):
        _verify(_director(campaign="autumn"))
    with pytest.raises(ScopeViolation, match="no signed scope for campaign 'spring'"):
        _verify(image=_image(scopes=[]))


def test_scope_outside_the_window() -> None:
    with pytest.raises(ScopeViolation, match="is outside the signed window of campaign spring"):
        _verify(now=dt.datetime(2030, 1, 8, tzinfo=dt.UTC))


def test_scope_for_other_hardware() -> None:
    image = _image(scopes=[_scope(hardware_ids=("hw-b",)).to_custom()])
    with pytest.raises(
        ScopeViolation, match="hardware id 'hw-a' is not in the signed scope of campaign spring"
    ):
        _verify(image=image)


def test_scope_outside_the_fraction() -> None:
    bucket = device_bucket(SALT, "dev-1")
    assert bucket > 0
    image = _image(scopes=[_scope(fraction_ppm=bucket).to_custom()])
    with pytest.raises(
        ScopeViolation, match=rf"device dev-1 \(bucket {bucket}\) is outside the signed fraction"
    ):
        _verify(image=image)
    inside = _image(scopes=[_scope(fraction_ppm=bucket + 1).to_custom()])
    assert _verify(image=inside).campaign == "spring"


def test_the_campaigns_own_scope_is_used() -> None:
    other = _scope(campaign="autumn", hardware_ids=("hw-b",)).to_custom()
    assert _verify(image=_image(scopes=[other, _scope().to_custom()])).campaign == "spring"


# image_release: parsing the image repository's custom fields.


def test_image_release_parses_the_fields() -> None:
    assert image_release(_image()) == ImageRelease("2.0", 7, ("hw-a", "hw-b"), (_scope(),))
    assert image_release(_image(scopes=[])).scopes == ()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"release": ""}, "has no release name"),
        ({"release": 2}, "has no release name"),
        ({"release_counter": -1}, "has no valid release counter"),
        ({"release_counter": True}, "has no valid release counter"),
        ({"release_counter": 2**63}, "has no valid release counter"),
        ({"release_counter": "7"}, "has no valid release counter"),
        ({"hardware_ids": []}, "names no hardware ids"),
        ({"hardware_ids": "hw-a"}, "names no hardware ids"),
        ({"hardware_ids": ["hw-a", 3]}, "names no hardware ids"),
        ({"scopes": {"campaign": "spring"}}, "has a malformed scope list"),
        ({"scopes": [_scope().to_custom()] * 65}, "has a malformed scope list"),
        ({"scopes": [{"campaign": "spring"}]}, "has a malformed scope: scope lacks"),
        ({"scopes": ["scope"]}, "has a malformed scope: scope must be a JSON object"),
    ],
)
def test_image_release_rejects_malformed_fields(fields: dict[str, Any], message: str) -> None:
    image = _image(**fields)
    with pytest.raises(UpdateRejected, match=f"image repository entry {PATH} {message}"):
        image_release(image)
    with pytest.raises(UpdateRejected, match=message):
        _verify(image=image)


def test_image_entry_without_fleetguard_fields_is_rejected() -> None:
    with pytest.raises(UpdateRejected, match=f"image repository entry {PATH} has no fleetguard fields"):
        _verify(image=TargetEntry(PATH, 100, {"sha256": SHA}, {"other": 1}))
