"""The A/B slot store: install, switch, boot counter, commit, rollback, anti-rollback, crashes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import stat
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetguard.agent.errors import (
    AgentConfigInvalid,
    AntiRollbackRefused,
    ImageMismatch,
    ImageTooLarge,
    SlotError,
    SlotInputInvalid,
    SlotIoFailed,
    SlotStateInvalid,
    SlotTransitionRefused,
)
from fleetguard.agent.slots import (
    BootState,
    CommandHealthCheck,
    HealthResult,
    HealthStatus,
    PendingSwitch,
    SlotName,
    SlotState,
    SlotStore,
    UpdateStep,
    parse_boot_state,
    run_boot_sequence,
    serialize_boot_state,
)

IMAGE_A = b"rootfs 2026.01\n" * 1000
IMAGE_B = b"rootfs 2026.02\n" * 1200
IMAGE_C = b"rootfs 2026.03\n" * 900


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def store(tmp_path: Path) -> SlotStore:
    """Slot a holds 2026.01 (counter 10), active and committed; slot b is empty."""
    return SlotStore.initialize(tmp_path / "slots", IMAGE_A, "2026.01", 10)


def _install(store: SlotStore, data: bytes, release: str, counter: int) -> BootState:
    store.begin_install(release, counter, _sha(data), len(data))
    store.write_image([data[:1000], data[1000:]])
    return store.mark_installed()


def _commit(store: SlotStore, data: bytes, release: str, counter: int) -> BootState:
    _install(store, data, release, counter)
    store.switch()
    store.boot()
    return store.commit()


@dataclass
class Recorder:
    """The report callable: keeps every step."""

    steps: list[tuple[UpdateStep, str]] = field(default_factory=list)

    def __call__(self, step: UpdateStep, detail: str) -> None:
        self.steps.append((step, detail))

    @property
    def names(self) -> list[UpdateStep]:
        return [step for step, _ in self.steps]


@dataclass
class FixedHealth:
    """A health check with a fixed answer; counts its runs."""

    result: HealthResult
    runs: int = 0

    def check(self) -> HealthResult:
        self.runs += 1
        return self.result


HEALTHY = FixedHealth(HealthResult(HealthStatus.HEALTHY, "all services up"))


def _unhealthy() -> FixedHealth:
    return FixedHealth(HealthResult(HealthStatus.UNHEALTHY, "fleet-daemon did not start"))


class PowerCut(Exception):
    """Stands for the power going away in the middle of a write."""


def _cut_after(data: bytes, cut: int) -> Iterator[bytes]:
    yield data[:cut]
    raise PowerCut


def _unchanged(store: SlotStore, before: bytes) -> None:
    assert store.state_path.read_bytes() == before
    assert store.image_path(SlotName.A).read_bytes() == IMAGE_A


# -- initialize -----------------------------------------------------------------------------------


def test_initialize_makes_slot_a_active_and_committed(store: SlotStore) -> None:
    state = store.read_state()

    assert (state.active, state.booted, state.pending, state.min_release_counter) == ("a", "a", None, 10)
    assert state.a.state is SlotState.COMMITTED
    assert state.a.image is not None
    assert (state.a.image.release, state.a.image.sha256, state.a.image.length) == (
        "2026.01", _sha(IMAGE_A), len(IMAGE_A),
    )  # fmt: skip
    assert state.b.state is SlotState.EMPTY
    assert store.active_image_path().read_bytes() == IMAGE_A
    assert _mode(store.state_path) == _mode(store.image_path(SlotName.A)) == 0o600


def test_initialize_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "image").write_bytes(IMAGE_A)

    store = SlotStore.initialize(tmp_path / "slots", tmp_path / "image", "2026.01", 10)

    assert store.active_image_path().read_bytes() == IMAGE_A


def test_initialize_refuses_a_directory_with_a_boot_state(store: SlotStore) -> None:
    before = store.state_path.read_bytes()

    with pytest.raises(SlotTransitionRefused, match=r"^cannot initialize: .*bootstate\.json exists$"):
        SlotStore.initialize(store.directory, b"other", "x", 0)
    _unchanged(store, before)


def test_initialize_refuses_an_empty_image(tmp_path: Path) -> None:
    with pytest.raises(SlotInputInvalid, match=r"^the image length must be from 1 to"):
        SlotStore.initialize(tmp_path / "slots", b"", "2026.01", 10)
    assert not (tmp_path / "slots" / "bootstate.json").exists()


# -- the update cycle -----------------------------------------------------------------------------


def test_update_a_to_b_to_a(store: SlotStore) -> None:
    report = Recorder()
    _install(store, IMAGE_B, "2026.02", 11)
    store.switch()

    state = run_boot_sequence(store, HEALTHY, report)

    assert report.names == [UpdateStep.REBOOTED, UpdateStep.HEALTHY, UpdateStep.COMMITTED]
    assert report.steps[0][1] == "slot b runs 2026.02 (2 tries left)"
    assert (state.active, state.booted, state.pending, state.min_release_counter) == ("b", "b", None, 11)
    assert (state.a.state, state.b.state) == (SlotState.SUPERSEDED, SlotState.COMMITTED)
    assert store.active_image_path().read_bytes() == IMAGE_B

    _install(store, IMAGE_C, "2026.03", 12)
    store.switch()
    state = run_boot_sequence(store, HEALTHY, Recorder())

    assert (state.active, state.min_release_counter) == ("a", 12)
    assert store.active_image_path().read_bytes() == IMAGE_C
    assert store.image_path(SlotName.B).read_bytes() == IMAGE_B


def test_each_operation_persists_a_higher_generation(store: SlotStore) -> None:
    generations = [store.read_state().generation]
    store.begin_install("2026.02", 11, _sha(IMAGE_B), len(IMAGE_B))
    generations.append(store.read_state().generation)
    store.write_image([IMAGE_B])
    generations.append(store.read_state().generation)
    store.mark_installed()
    generations.append(store.read_state().generation)

    assert generations == [1, 2, 3, 4]
    assert store.read_state().b.state is SlotState.INSTALLED


def test_a_plain_boot_runs_the_active_slot_and_reports_nothing(store: SlotStore) -> None:
    report = Recorder()

    state = run_boot_sequence(store, HEALTHY, report)

    assert (state.booted, report.steps) == ("a", [])


def test_the_image_can_come_from_a_file(store: SlotStore, tmp_path: Path) -> None:
    (tmp_path / "download").write_bytes(IMAGE_B)
    store.begin_install("2026.02", 11, _sha(IMAGE_B), len(IMAGE_B))

    state = store.write_image(tmp_path / "download")

    assert state.b.state is SlotState.WRITTEN
    assert store.image_path(SlotName.B).read_bytes() == IMAGE_B
    assert _mode(store.image_path(SlotName.B)) == 0o600


def test_failed_health_check_rolls_back_and_keeps_the_counter(store: SlotStore) -> None:
    report = Recorder()
    _install(store, IMAGE_B, "2026.02", 11)
    store.switch()

    state = run_boot_sequence(store, _unhealthy(), report)

    assert report.steps[1:] == [(UpdateStep.ROLLED_BACK, "fleet-daemon did not start")]
    assert report.names == [UpdateStep.REBOOTED, UpdateStep.ROLLED_BACK]
    assert (state.active, state.pending, state.min_release_counter) == ("a", None, 10)
    assert (state.b.state, state.b.reason) == (SlotState.INVALID, "fleet-daemon did not start")
    assert store.boot().booted == "a"
    assert store.active_image_path().read_bytes() == IMAGE_A


def test_an_exhausted_boot_counter_rolls_back(store: SlotStore) -> None:
    _install(store, IMAGE_B, "2026.02", 11)
    store.switch(tries=2)

    booted = [(state.booted, state.pending) for state in (store.boot(), store.boot())]
    report = Recorder()
    health = _unhealthy()
    state = run_boot_sequence(store, health, report)

    assert booted == [("b", PendingSwitch(SlotName.B, 1)), ("b", PendingSwitch(SlotName.B, 0))]
    assert report.steps == [(UpdateStep.ROLLED_BACK, "boot counter exhausted")]
    assert health.runs == 0
    assert (state.active, state.booted, state.pending, state.min_release_counter) == ("a", "a", None, 10)
    assert (state.b.state, state.b.reason) == (SlotState.INVALID, "boot counter exhausted")


def test_a_rolled_back_slot_can_be_installed_again_after_the_reboot(store: SlotStore) -> None:
    _install(store, IMAGE_B, "2026.02", 11)
    store.switch()
    store.boot()
    store.rollback("watchdog fired")
    before = store.state_path.read_bytes()

    with pytest.raises(SlotTransitionRefused, match=r"the device runs slot b; reboot into slot a first$"):
        store.begin_install("2026.02", 11, _sha(IMAGE_B), len(IMAGE_B))
    _unchanged(store, before)

    store.boot()
    assert _commit(store, IMAGE_B, "2026.02", 11).active == "b"


def test_an_install_can_be_abandoned_before_the_switch(store: SlotStore) -> None:
    _install(store, IMAGE_B, "2026.02", 11)

    state = store.rollback("the operator cancelled the rollout")

    assert (state.active, state.b.state, state.b.reason) == (
        "a",
        "invalid",
        "the operator cancelled the rollout",
    )
    with pytest.raises(SlotTransitionRefused, match=r"^cannot switch slots: slot b is invalid$"):
        store.switch()


# -- refused transitions --------------------------------------------------------------------------


def test_no_install_while_a_switch_is_pending(store: SlotStore) -> None:
    _install(store, IMAGE_B, "2026.02", 11)
    store.switch()
    before = store.state_path.read_bytes()

    with pytest.raises(
        SlotTransitionRefused,
        match=r"^cannot begin an install: slot b is trying; a switch is pending: commit or roll back first$",
    ):
        store.begin_install("2026.03", 12, _sha(IMAGE_C), len(IMAGE_C))
    _unchanged(store, before)


def test_commit_needs_the_new_slot_booted(store: SlotStore) -> None:
    with pytest.raises(SlotTransitionRefused, match=r"^cannot commit: slot b is empty$"):
        store.commit()
    _install(store, IMAGE_B, "2026.02", 11)
    store.switch()
    before = store.state_path.read_bytes()

    with pytest.raises(
        SlotTransitionRefused, match=r"^cannot commit: slot b was not booted; the device runs slot a$"
    ):
        store.commit()
    _unchanged(store, before)


@pytest.mark.parametrize(
    ("operation", "message"),
    [
        (lambda s: s.write_image([b"x"]), r"^cannot write the image: slot b is empty$"),
        (lambda s: s.mark_installed(), r"^cannot mark the slot installed: slot b is empty$"),
        (lambda s: s.switch(), r"^cannot switch slots: slot b is empty$"),
        (lambda s: s.rollback("why"), r"^cannot roll back: slot b is empty$"),
    ],
)
def test_operations_out_of_order_are_refused(store: SlotStore, operation: object, message: str) -> None:
    before = store.state_path.read_bytes()

    with pytest.raises(SlotTransitionRefused, match=message):
        operation(store)  # type: ignore[operator]
    _unchanged(store, before)


@pytest.mark.parametrize("tries", [0, 8, -1])
def test_the_boot_counter_is_bounded(store: SlotStore, tries: int) -> None:
    _install(store, IMAGE_B, "2026.02", 11)

    with pytest.raises(SlotInputInvalid, match=r"^the boot counter must be from 1 to 7 tries$"):
        store.switch(tries)
    assert store.read_state().b.state is SlotState.INSTALLED


_B = _sha(IMAGE_B)


@pytest.mark.parametrize(
    ("release", "message"),
    [
        (("", 11, _B, 10), r"^the release name must be 1 to 128 printable ASCII characters$"),
        (("2026\n02", 11, _B, 10), r"^the release name must be"),
        (("x" * 129, 11, _B, 10), r"^the release name must be"),
        (("2026.02", -1, _B, 10), r"^the release counter must be an integer from 0 to"),
        (("2026.02", True, _B, 10), r"^the release counter must be"),
        (("2026.02", 1 << 63, _B, 10), r"^the release counter must be"),
        (("2026.02", 11, _B.upper(), 10), r"^the SHA-256 must be 64 lower-case hex digits$"),
        (("2026.02", 11, "ab", 10), r"^the SHA-256 must be"),
        (("2026.02", 11, _B, 0), r"^the image length must be from 1 to 17179869184 bytes$"),
        (("2026.02", 11, _B, (1 << 34) + 1), r"^the image length must be"),
    ],
)
def test_malformed_releases_are_refused(
    store: SlotStore, release: tuple[str, int, str, int], message: str
) -> None:
    before = store.state_path.read_bytes()

    with pytest.raises(SlotInputInvalid, match=message):
        store.begin_install(*release)
    _unchanged(store, before)


# -- anti-rollback --------------------------------------------------------------------------------


def test_rollback_to_an_older_release_after_a_commit_is_rejected(store: SlotStore) -> None:
    _commit(store, IMAGE_B, "2026.02", 11)
    before = store.state_path.read_bytes()

    with pytest.raises(
        AntiRollbackRefused, match=r"^release 2026.01 has counter 10, below the device's minimum 11 \("
    ) as caught:
        store.begin_install("2026.01", 10, _sha(IMAGE_A), len(IMAGE_A))
    assert (caught.value.counter, caught.value.minimum) == (10, 11)
    assert store.state_path.read_bytes() == before


def test_an_older_release_never_installed_is_rejected(store: SlotStore) -> None:
    before = store.state_path.read_bytes()

    with pytest.raises(
        AntiRollbackRefused, match=r"^release 2025.07 has counter 3, below the device's minimum 10"
    ):
        store.begin_install("2025.07", 3, _sha(IMAGE_C), len(IMAGE_C))
    _unchanged(store, before)


def test_the_committed_counter_with_another_image_is_rejected(store: SlotStore) -> None:
    before = store.state_path.read_bytes()

    with pytest.raises(
        AntiRollbackRefused,
        match=r"^release 2026.01-evil reuses counter 10 of the committed release 2026.01 with a different",
    ):
        store.begin_install("2026.01-evil", 10, _sha(IMAGE_C), len(IMAGE_C))
    _unchanged(store, before)


def test_the_committed_release_may_be_installed_again(store: SlotStore) -> None:
    state = _install(store, IMAGE_A, "2026.01", 10)

    assert state.b.state is SlotState.INSTALLED


def test_a_rolled_back_update_does_not_raise_the_counter(store: SlotStore) -> None:
    _install(store, IMAGE_B, "2026.02", 11)
    store.switch()
    store.boot()
    store.rollback("unhealthy")
    store.boot()

    state = _commit(store, IMAGE_C, "2026.03", 11)  # same counter as the rolled-back release: allowed

    assert state.min_release_counter == 11


# -- image verification ---------------------------------------------------------------------------


def test_a_hash_mismatch_leaves_the_active_slot_byte_identical(store: SlotStore) -> None:
    tampered = IMAGE_B[:-1] + b"X"
    store.begin_install("2026.02", 11, _sha(IMAGE_B), len(IMAGE_B))

    with pytest.raises(
        ImageMismatch, match=rf"^slot b holds {len(IMAGE_B)} bytes, sha256 {_sha(tampered)}; "
    ):
        store.write_image([tampered])

    state = store.read_state()
    assert (state.b.state, state.b.reason) == (
        SlotState.INVALID,
        f"image mismatch: {len(IMAGE_B)} bytes, sha256 {_sha(tampered)}",
    )
    assert store.image_path(SlotName.A).read_bytes() == IMAGE_A
    assert (state.active, state.a) == ("a", store.read_state().a)
    with pytest.raises(SlotTransitionRefused, match=r"^cannot mark the slot installed: slot b is invalid$"):
        store.mark_installed()
    assert store.boot().booted == "a"


def test_an_image_longer_than_declared_is_refused(store: SlotStore) -> None:
    store.begin_install("2026.02", 11, _sha(IMAGE_B), 100)

    with pytest.raises(
        ImageTooLarge, match=r"^the image for slot-b.img is longer than the declared 100 bytes$"
    ):
        store.write_image([IMAGE_B[:60], IMAGE_B[60:120], IMAGE_B[120:]])

    assert store.read_state().b.state is SlotState.INVALID
    assert store.image_path(SlotName.B).stat().st_size <= 100
    assert store.image_path(SlotName.A).read_bytes() == IMAGE_A


def test_an_image_shorter_than_declared_is_refused(store: SlotStore) -> None:
    store.begin_install("2026.02", 11, _sha(IMAGE_B), len(IMAGE_B))

    with pytest.raises(
        ImageMismatch, match=rf"; release 2026.02 has {len(IMAGE_B)} bytes, sha256 {_sha(IMAGE_B)}"
    ):
        store.write_image([IMAGE_B[:-1]])
    assert store.read_state().b.state is SlotState.INVALID


def test_a_slot_changed_after_writing_fails_the_read_back(store: SlotStore) -> None:
    store.begin_install("2026.02", 11, _sha(IMAGE_B), len(IMAGE_B))
    store.write_image([IMAGE_B])
    store.image_path(SlotName.B).write_bytes(IMAGE_B[:-1] + b"?")  # a flash error, or tampering

    with pytest.raises(ImageMismatch, match=r"^slot b holds .*; release 2026.02 has "):
        store.mark_installed()
    assert store.read_state().b.state is SlotState.INVALID


def test_a_slot_that_cannot_be_written_is_an_io_error(store: SlotStore) -> None:
    store.begin_install("2026.02", 11, _sha(IMAGE_B), len(IMAGE_B))
    store.image_path(SlotName.B).mkdir()

    with pytest.raises(SlotIoFailed, match=r"^cannot write .*slot-b\.img: Is a directory$"):
        store.write_image([IMAGE_B])
    assert store.read_state().b.state is SlotState.WRITING


def test_a_slot_that_cannot_be_read_back_is_an_io_error(store: SlotStore) -> None:
    store.begin_install("2026.02", 11, _sha(IMAGE_B), len(IMAGE_B))
    store.write_image([IMAGE_B])
    store.image_path(SlotName.B).unlink()

    with pytest.raises(SlotIoFailed, match=r"^cannot read .*slot-b\.img: No such file or directory$"):
        store.mark_installed()
    assert store.read_state().b.state is SlotState.WRITTEN


def test_an_unreadable_boot_state_is_an_io_error(tmp_path: Path) -> None:
    (tmp_path / "bootstate.json").mkdir()

    with pytest.raises(SlotIoFailed, match=r"^cannot read .*bootstate\.json: Is a directory$"):
        SlotStore(tmp_path).read_state()


# -- crash consistency ----------------------------------------------------------------------------


def _steps_before_switch(store: SlotStore) -> list[object]:
    return [
        lambda: store.begin_install("2026.02", 11, _sha(IMAGE_B), len(IMAGE_B)),
        lambda: store.write_image([IMAGE_B]),
        store.mark_installed,
    ]


@pytest.mark.parametrize("done", [0, 1, 2, 3])
def test_a_crash_before_the_switch_boots_the_old_slot(store: SlotStore, done: int) -> None:
    for step in _steps_before_switch(store)[:done]:
        step()  # type: ignore[operator]

    after_power_cut = SlotStore(store.directory)
    state = after_power_cut.boot()

    assert (state.active, state.booted, state.pending) == ("a", "a", None)
    assert after_power_cut.active_image_path().read_bytes() == IMAGE_A
    assert _commit(after_power_cut, IMAGE_B, "2026.02", 11).active == "b"  # the install starts over


@pytest.mark.parametrize("cut", [0, 1, 4096, len(IMAGE_B) - 1])
def test_a_partially_written_slot_is_never_booted(store: SlotStore, cut: int) -> None:
    store.begin_install("2026.02", 11, _sha(IMAGE_B), len(IMAGE_B))

    with pytest.raises(PowerCut):
        store.write_image(_cut_after(IMAGE_B, cut))

    after_power_cut = SlotStore(store.directory)
    assert after_power_cut.read_state().b.state is SlotState.WRITING
    with pytest.raises(SlotTransitionRefused, match=r"^cannot switch slots: slot b is writing$"):
        after_power_cut.switch()
    assert after_power_cut.boot().booted == "a"
    assert after_power_cut.image_path(SlotName.A).read_bytes() == IMAGE_A
    assert after_power_cut.write_image([IMAGE_B]).b.state is SlotState.WRITTEN  # the write starts over


def test_a_crash_after_the_switch_ends_in_a_rollback(store: SlotStore) -> None:
    _install(store, IMAGE_B, "2026.02", 11)
    store.switch(tries=3)

    booted = []
    for _ in range(4):  # the new slot hangs before its health check each time; the power is cut
        state = SlotStore(store.directory).boot()
        booted.append((state.booted, None if state.pending is None else state.pending.tries_remaining))

    assert booted == [("b", 2), ("b", 1), ("b", 0), ("a", None)]
    state = SlotStore(store.directory).read_state()
    assert (state.active, state.min_release_counter, state.b.reason) == ("a", 10, "boot counter exhausted")


def test_a_crash_during_the_health_check_retries_it_on_the_next_boot(store: SlotStore) -> None:
    _install(store, IMAGE_B, "2026.02", 11)
    store.switch()
    store.boot()  # the power is cut while the health check runs

    report = Recorder()
    state = run_boot_sequence(SlotStore(store.directory), HEALTHY, report)

    assert report.names == [UpdateStep.REBOOTED, UpdateStep.HEALTHY, UpdateStep.COMMITTED]
    assert report.steps[0][1] == "slot b runs 2026.02 (1 tries left)"
    assert (state.active, state.min_release_counter) == ("b", 11)


def test_a_crash_while_replacing_the_state_leaves_the_old_state(store: SlotStore) -> None:
    before = store.read_state()
    (store.directory / ".bootstate.json.tmp").write_bytes(b'{"version": 1, "generat')  # cut before rename

    after_power_cut = SlotStore(store.directory)

    assert after_power_cut.read_state() == before
    state = after_power_cut.begin_install("2026.02", 11, _sha(IMAGE_B), len(IMAGE_B))
    assert state.generation == before.generation + 1
    assert not (store.directory / ".bootstate.json.tmp").exists()
    assert _mode(store.state_path) == 0o600


def _document(store: SlotStore) -> dict[str, object]:
    document: dict[str, object] = json.loads(store.state_path.read_bytes())
    return document


@pytest.mark.parametrize("keep", [0, 1, 20, 200, -2])
def test_a_truncated_boot_state_is_an_error_not_a_reset(store: SlotStore, keep: int) -> None:
    truncated = store.state_path.read_bytes()[:keep]
    store.state_path.write_bytes(truncated)

    with pytest.raises(
        SlotStateInvalid,
        match=r"^the boot state .*bootstate\.json is not valid: .*\(the agent does not reset it",
    ):
        SlotStore(store.directory).boot()
    assert store.state_path.read_bytes() == truncated
    assert not store.image_path(SlotName.B).exists()


def test_a_missing_boot_state_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SlotStateInvalid, match=r"is not valid: missing \(SlotStore.initialize creates it\)"):
        SlotStore(tmp_path).read_state()


def test_an_oversized_boot_state_is_an_error(store: SlotStore) -> None:
    store.state_path.write_bytes(b" " * (64 * 1024 + 1))

    with pytest.raises(SlotStateInvalid, match=r"is not valid: larger than 65536 bytes"):
        store.read_state()


def _edit(document: dict[str, object], path: str, value: object) -> None:
    *parents, last = path.split(".")
    target = document
    for key in parents:
        target = target[key]  # type: ignore[assignment]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value


_DELETE = object()
_OTHER_COMMITTED = {
    "state": "committed",
    "reason": None,
    "image": {"release": "x", "counter": 10, "sha256": "0" * 64, "length": 1},
}


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("version", 2, r"version 2 is not 1"),
        ("version", True, r"version True is not 1"),
        ("extra", 1, r"the document must be an object with exactly the keys active, booted, generation"),
        ("pending", _DELETE, r"the document must be an object with exactly the keys"),
        ("active", "c", r"active must be one of a, b"),
        ("generation", 1.0, r"generation must be an integer from 0 to"),
        ("min_release_counter", -1, r"min_release_counter must be an integer"),
        ("min_release_counter", 11, r"the active release's counter is below min_release_counter"),
        ("slots.a.state", "good", r"slot a state must be one of empty, writing"),
        ("slots.a.image.counter", False, r"slot a counter must be an integer"),
        ("slots.a.image.sha256", "00", r"the SHA-256 must be 64 lower-case hex digits"),
        ("slots.a.image.release", 5, r"slot a: the release and sha256 must be strings"),
        ("slots.a.image.signature", "x", r"slot a image must be an object with exactly the keys"),
        ("slots.a.image", None, r"slot a is committed but holds no image"),
        ("slots.a.state", "superseded", r"the active slot a must be the one committed slot"),
        ("slots.b", _OTHER_COMMITTED, r"the active slot a must be the one committed slot"),
        ("slots.b.state", "trying", r"slot b is trying but holds no image"),
        ("slots.a.reason", "x", r"slot a is committed; only an invalid slot has a reason"),
        ("slots.c", {}, r"slots must be an object with exactly the keys a, b"),
        ("pending", {"target": "b", "tries_remaining": 3}, r"a pending switch must go with a trying slot b"),
        ("pending", {"target": "b", "tries_remaining": 8}, r"tries_remaining must be an integer from 0 to 7"),
        ("booted", "b", r"slot b was booted but is empty"),
    ],
)
def test_a_boot_state_that_is_not_exactly_the_format_is_an_error(
    store: SlotStore, path: str, value: object, message: str
) -> None:
    document = _document(store)
    _edit(document, path, value)
    edited = json.dumps(document).encode()
    store.state_path.write_bytes(edited)

    with pytest.raises(SlotStateInvalid, match=message):
        store.boot()
    assert store.state_path.read_bytes() == edited


def test_a_pending_switch_to_the_active_slot_is_an_error(store: SlotStore) -> None:
    _install(store, IMAGE_B, "2026.02", 11)
    store.switch()
    document = _document(store)
    _edit(document, "pending.target", "a")
    store.state_path.write_bytes(json.dumps(document).encode())

    with pytest.raises(
        SlotStateInvalid, match=r"is not valid: the pending switch targets the active slot \("
    ):
        store.boot()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"version": 1, "version": 1}', r"duplicate keys"),
        (b'{"version": NaN}', r"NaN is not JSON"),
        (b"\xff\xfe", r"is not valid: "),
        (b"[" * 100_000, r"is not valid: "),
        (b"[]", r"the document must be an object"),
    ],
)
def test_malformed_json_is_an_error(data: bytes, message: str) -> None:
    with pytest.raises(SlotStateInvalid, match=message):
        parse_boot_state(data)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


@given(document=_JSON)
def test_random_json_raises_only_slot_state_invalid(document: object) -> None:
    with contextlib.suppress(SlotStateInvalid):
        parse_boot_state(json.dumps(document).encode())


_KEYS = [
    "version", "generation", "active", "booted", "min_release_counter", "pending", "slots.a.state",
    "slots.a.image", "slots.a.image.counter", "slots.a.reason", "slots.b.state", "slots.b.image",
]  # fmt: skip


@given(path=st.sampled_from(_KEYS), value=_JSON)
def test_a_valid_document_with_one_value_replaced_parses_or_raises_slot_state_invalid(
    path: str, value: object
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        store = SlotStore.initialize(Path(directory) / "s", b"image", "r1", 1)
        document = _document(store)
    _edit(document, path, value)
    try:
        state = parse_boot_state(json.dumps(document).encode())
    except SlotStateInvalid:
        return
    assert parse_boot_state(serialize_boot_state(state)) == state


_OPERATIONS = st.sampled_from(
    ["install", "write_bad", "switch", "boot", "commit", "rollback", "reinstall_old"]
)


@settings(max_examples=60, deadline=None)
@given(operations=st.lists(_OPERATIONS, max_size=25))
def test_any_sequence_of_operations_keeps_the_state_consistent(operations: list[str]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        store = SlotStore.initialize(Path(directory) / "s", IMAGE_A, "r10", 10)
        counter, minimum = 10, 10
        for name in operations:
            counter += 1
            with contextlib.suppress(SlotError):
                _apply(store, name, b"release %d\n" % counter * 50, counter)
            state = SlotStore(store.directory).read_state()
            assert parse_boot_state(serialize_boot_state(state)) == state
            active = state.slot(state.active).image
            assert active is not None
            assert _sha(store.active_image_path().read_bytes()) == active.sha256
            assert state.min_release_counter == active.counter >= minimum  # raised on commit, never lowered
            minimum = state.min_release_counter


def _apply(store: SlotStore, name: str, data: bytes, counter: int) -> None:
    if name == "install":
        _install(store, data, f"r{counter}", counter)
    elif name == "write_bad":
        store.begin_install(f"r{counter}", counter, _sha(data), len(data))
        store.write_image([data + b"!"])
    elif name == "reinstall_old":
        store.begin_install("r1", 1, _sha(data), len(data))
    elif name == "switch":
        store.switch(tries=2)
    elif name == "rollback":
        store.rollback("test")
    else:
        getattr(store, name)()


# -- health check ---------------------------------------------------------------------------------


def test_true_is_healthy() -> None:
    assert CommandHealthCheck(["true"], timeout_s=10).check() == HealthResult(
        HealthStatus.HEALTHY, "true exited with status 0"
    )


def test_false_is_unhealthy() -> None:
    assert CommandHealthCheck(["false"], timeout_s=10).check() == HealthResult(
        HealthStatus.UNHEALTHY, "false exited with status 1: no output on stderr"
    )


def test_the_reason_holds_the_tail_of_stderr() -> None:
    script = "import sys; sys.stderr.write('x' * 100000 + '\\nfleet-daemon: bind failed\\n'); sys.exit(3)"

    result = CommandHealthCheck([sys.executable, "-c", script], timeout_s=10).check()

    assert result.status is HealthStatus.UNHEALTHY
    assert result.reason.startswith(f"{sys.executable} exited with status 3: xxx")
    assert result.reason.endswith("xxx fleet-daemon: bind failed")
    assert len(result.reason) < len(sys.executable) + 1100


def test_a_command_past_its_timeout_is_killed_and_unhealthy() -> None:
    started = time.monotonic()

    result = CommandHealthCheck(["sh", "-c", "echo starting >&2; sleep 30 & sleep 30"], timeout_s=0.3).check()

    assert time.monotonic() - started < 10  # the whole group was killed: the backgrounded sleep too
    assert result == HealthResult(HealthStatus.UNHEALTHY, "sh did not finish within 0.3 s: starting")


def test_a_missing_command_is_unhealthy(tmp_path: Path) -> None:
    result = CommandHealthCheck([str(tmp_path / "no-such-check")], timeout_s=10).check()

    assert result == HealthResult(
        HealthStatus.UNHEALTHY, f"cannot run {tmp_path / 'no-such-check'}: No such file or directory"
    )


@pytest.mark.parametrize(
    ("argv", "timeout_s", "message"),
    [
        ([], 10, r"^the health check command is empty$"),
        ([""], 10, r"^the health check command is empty$"),
        (["true"], 0, r"^the health check timeout must be between 0 and 3600 seconds$"),
    ],
)
def test_a_malformed_health_check_is_refused(argv: list[str], timeout_s: float, message: str) -> None:
    with pytest.raises(AgentConfigInvalid, match=message):
        CommandHealthCheck(argv, timeout_s)


def test_the_command_health_check_drives_a_rollback(store: SlotStore) -> None:
    _install(store, IMAGE_B, "2026.02", 11)
    store.switch()
    report = Recorder()

    state = run_boot_sequence(store, CommandHealthCheck(["false"], timeout_s=10), report)

    assert report.steps[-1] == (UpdateStep.ROLLED_BACK, "false exited with status 1: no output on stderr")
    assert state.b.reason == "false exited with status 1: no output on stderr"


# -- wire values ----------------------------------------------------------------------------------


def test_update_steps_are_the_rollout_engines_wire_values() -> None:
    assert [str(step) for step in UpdateStep] == [
        "downloading", "downloaded", "installed", "rebooted", "healthy", "committed", "rolled_back", "failed",
    ]  # fmt: skip
