"""``fleetguard policy``: show, validate, diff, apply (with confirmation), history, decide, facts and
signals, driven through the command line against a real installation.

The fleet: two active cameras of type ``cam`` (firmware 1.0 and 2.0) and a registered spare, none
with a certificate. The shipped default forbids devices without a valid certificate, so every
decision is a deny; ``OPEN`` is the default without that forbid, which lets the active cameras in.
"""

from __future__ import annotations

import getpass
from pathlib import Path

import pytest

from fleetguard.cli import policy
from fleetguard.cli.exit_status import ExitStatus
from fleetguard.trust import DEFAULT_POLICIES, parse_policy_set

from .conftest import Cli, one_line

Json = dict[str, object]

_UNTRUSTED_START = DEFAULT_POLICIES.index('@id("untrusted-identity-nothing")')
_UNTRUSTED_END = DEFAULT_POLICIES.index('@id("end-of-life-firmware-nothing")')
OPEN = DEFAULT_POLICIES[:_UNTRUSTED_START] + DEFAULT_POLICIES[_UNTRUSTED_END:]
BAD = DEFAULT_POLICIES.replace('principal.state == "quarantined"', 'principal.nope == "quarantined"')
OPEN_IDS = (
    "active-devices-connect, active-devices-own-topics, active-devices-type-topics, "
    "quarantined-devices-nothing, end-of-life-firmware-nothing"
)


@pytest.fixture
def fleet(cli: Cli, initialized: None) -> Cli:
    cli.ok("types", "add", "cam")
    for device_id, firmware in (("cam-1", "1.0"), ("cam-2", "2.0")):
        cli.ok("devices", "add", "--id", device_id, "--serial", device_id, "--manufacturer", "Acme",
               "--type", "cam", "--firmware", firmware)  # fmt: skip
        cli.ok("devices", "provision", device_id)
        cli.ok("devices", "activate", device_id)
    cli.ok("devices", "add", "--id", "spare", "--serial", "spare", "--manufacturer", "Acme")
    return cli


def _file(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def _history(cli: Cli) -> list[Json]:
    history = cli.json("policy", "history")
    assert isinstance(history, list)
    return history


def _applied_events(cli: Cli) -> list[Json]:
    events = cli.json("events", "list", "--action", "trust.policy_applied")
    assert isinstance(events, list)
    return events


def _where(text: str, needle: str) -> tuple[int, int]:
    offset = text.index(needle)
    return text.count("\n", 0, offset) + 1, offset - text.rfind("\n", 0, offset)


# -- show, validate --------------------------------------------------------------------------


def test_show_default_prints_the_text_on_stdout_and_what_it_is_on_stderr(fleet: Cli) -> None:
    result = fleet("policy", "show", "--default")
    assert result.exit_code == 0, result.output
    assert result.stdout == DEFAULT_POLICIES
    digest = parse_policy_set(DEFAULT_POLICIES).digest
    assert result.stderr.splitlines() == [
        f"policy version 0 (6 policies, sha256 {digest}): the shipped default",
        "firmware minimum: none; end of life: none",
    ]


def test_show_json_has_version_digest_policies_and_firmware(fleet: Cli) -> None:
    shown = fleet.json("policy", "show")
    assert shown == {
        "version": 0,
        "digest": parse_policy_set(DEFAULT_POLICIES).digest,
        "policies": list(parse_policy_set(DEFAULT_POLICIES).ids),
        "firmware": {"minimum": {}, "end_of_life": []},
        "actor": "fleetguard",
        "reason": "the shipped default",
        "created_at": None,
        "text": DEFAULT_POLICIES,
    }


def test_show_refuses_version_and_default_together(fleet: Cli) -> None:
    result = fleet("policy", "show", "--version", "1", "--default")
    assert result.exit_code == ExitStatus.USAGE
    assert "give at most one of --version N and --default" in result.stderr


def test_show_of_an_unknown_version_is_one_line(fleet: Cli) -> None:
    result = fleet("policy", "show", "--version", "9")
    assert result.exit_code == ExitStatus.FAILURE
    assert one_line(result.stderr) == "error: no policy version 9"


def test_validate_prints_the_ids_and_digest(fleet: Cli, tmp_path: Path) -> None:
    result = fleet.ok("policy", "validate", _file(tmp_path, "open.cedar", OPEN))
    assert result.stdout == f"valid: 5 policies ({OPEN_IDS}), sha256 {parse_policy_set(OPEN).digest}\n"


def test_validate_names_the_line_and_column_of_an_error(fleet: Cli, tmp_path: Path) -> None:
    result = fleet("policy", "validate", _file(tmp_path, "bad.cedar", BAD))
    assert result.exit_code == ExitStatus.FAILURE
    line, column = _where(BAD, "nope")
    assert one_line(result.stderr) == (
        f"error: line {line}, column {column} (policy 'quarantined-devices-nothing'): attribute `nope` on "
        "entity type `Fleet::Device` not found (fix the policy; nothing was applied)"
    )


def test_validate_a_file_that_is_not_utf8_names_the_byte(fleet: Cli, tmp_path: Path) -> None:
    path = tmp_path / "latin1.cedar"
    path.write_bytes(b'// caf\xe9\n@id("a")\npermit (principal, action, resource);\n')
    result = fleet("policy", "validate", str(path))
    assert result.exit_code == ExitStatus.FAILURE
    assert one_line(result.stderr).startswith("error: line 1, column 7: the policy set is not UTF-8 text")


def test_an_empty_policy_set_is_refused_and_nothing_is_stored(fleet: Cli, tmp_path: Path) -> None:
    empty = _file(tmp_path, "empty.cedar", "// no policy at all\n")
    for command in (("validate", empty), ("apply", empty, "--yes")):
        result = fleet("policy", *command)
        assert result.exit_code == ExitStatus.FAILURE
        assert one_line(result.stderr) == (
            "error: the policy set has no policy; an empty set would deny everything and is refused "
            "(start from `fleetguard policy show --default`)"
        )
    assert _history(fleet) == []
    assert _applied_events(fleet) == []


def test_an_invalid_policy_is_not_applied(fleet: Cli, tmp_path: Path) -> None:
    result = fleet("policy", "apply", _file(tmp_path, "bad.cedar", BAD), "--yes")
    assert result.exit_code == ExitStatus.FAILURE
    line, column = _where(BAD, "nope")
    assert one_line(result.stderr).startswith(f"error: line {line}, column {column} ")
    assert _history(fleet) == []
    assert _applied_events(fleet) == []
    assert fleet.json("policy", "show")["version"] == 0  # type: ignore[index]


# -- diff ------------------------------------------------------------------------------------


def test_diff_lists_exactly_the_changed_devices_and_applies_nothing(fleet: Cli, tmp_path: Path) -> None:
    result = fleet.ok("policy", "diff", _file(tmp_path, "open.cedar", OPEN))
    lines = [" ".join(line.split()) for line in result.stdout.splitlines()]
    assert lines[0] == "device action resource outcome decided by"
    rows = lines[1:-1]
    assert len(rows) == 10
    assert {row.split()[0] for row in rows} == {"cam-1", "cam-2"}
    assert "cam-1 connect mqtt deny → allow untrusted-identity-nothing → active-devices-connect" in rows
    assert (
        "cam-2 publish types/cam/# deny → allow untrusted-identity-nothing → active-devices-type-topics"
        in rows
    )
    assert lines[-1] == "10 decisions would change, on 2 of 3 devices; nothing was applied"
    assert _history(fleet) == []


def test_diff_json_counts_devices_and_decisions(fleet: Cli, tmp_path: Path) -> None:
    diff = fleet.json("policy", "diff", _file(tmp_path, "open.cedar", OPEN))
    assert isinstance(diff, dict)
    assert (diff["current_version"], diff["devices"], diff["changed_devices"]) == (0, 3, 2)
    assert diff["changed_decisions"] == len(diff["changes"]) == 10
    assert diff["changes"][0] == {
        "device_id": "cam-1",
        "action": "connect",
        "resource": "mqtt",
        "before": "deny",
        "after": "allow",
        "before_policies": ["untrusted-identity-nothing"],
        "after_policies": ["active-devices-connect"],
    }


def test_diff_with_an_end_of_life_version_keeps_that_device_out(fleet: Cli, tmp_path: Path) -> None:
    open_file = _file(tmp_path, "open.cedar", OPEN)
    diff = fleet.json("policy", "diff", open_file, "--end-of-life", "cam@1.0")
    assert isinstance(diff, dict)
    assert {change["device_id"] for change in diff["changes"]} == {"cam-2"}
    assert diff["changed_decisions"] == 5


def test_diff_of_the_policy_in_force_changes_nothing(fleet: Cli, tmp_path: Path) -> None:
    result = fleet.ok("policy", "diff", _file(tmp_path, "default.cedar", DEFAULT_POLICIES))
    assert result.stdout == "0 decisions would change, on 0 of 3 devices; nothing was applied\n"


# -- apply, history --------------------------------------------------------------------------


def test_apply_creates_version_1_then_2(fleet: Cli, tmp_path: Path) -> None:
    open_file = _file(tmp_path, "open.cedar", OPEN)
    first = fleet("policy", "apply", open_file, "--yes", "--reason", "lab without certificates")
    assert first.exit_code == 0, first.output
    assert first.stdout == f"applied policy version 1: 5 policies, sha256 {parse_policy_set(OPEN).digest}\n"
    assert first.stderr == "10 decisions would change, on 2 of 3 devices\n"
    second = fleet.ok("policy", "apply", _file(tmp_path, "default.cedar", DEFAULT_POLICIES), "-y")
    digest = parse_policy_set(DEFAULT_POLICIES).digest
    assert second.stdout == f"applied policy version 2: 6 policies, sha256 {digest}\n"

    history = _history(fleet)
    actor = f"cli:{getpass.getuser()}"
    assert [(h["version"], h["actor"], h["reason"]) for h in history] == [
        (2, actor, ""),
        (1, actor, "lab without certificates"),
    ]
    assert fleet.ok("policy", "show", "--version", "1").stdout == OPEN
    assert fleet.ok("policy", "show").stdout == DEFAULT_POLICIES
    assert [event["data"]["version"] for event in _applied_events(fleet)] == [1, 2]  # type: ignore[index]
    table = fleet.ok("policy", "history").stdout.splitlines()
    assert table[0].split() == ["version", "applied", "actor", "policies", "sha256", "reason"]
    assert table[1].split()[0] == "2"
    assert table[2].split()[0] == "1"
    assert table[2].endswith("lab without certificates")


def test_apply_with_a_stale_expected_version_is_a_conflict(fleet: Cli, tmp_path: Path) -> None:
    open_file = _file(tmp_path, "open.cedar", OPEN)
    fleet.ok("policy", "apply", open_file, "--yes", "--expected-version", "0")
    result = fleet("policy", "apply", open_file, "--yes", "--expected-version", "0")
    assert result.exit_code == ExitStatus.FAILURE
    assert one_line(result.stderr) == (
        "error: policy version 1 is in force, not 0 "
        "(review fleetguard policy diff against the current version and apply again)"
    )
    assert len(_history(fleet)) == 1


def test_apply_without_yes_from_a_pipe_is_refused_with_usage_status(fleet: Cli, tmp_path: Path) -> None:
    result = fleet("policy", "apply", _file(tmp_path, "open.cedar", OPEN))
    assert result.exit_code == ExitStatus.USAGE
    assert one_line(result.stderr) == (
        "error: stdin is not a terminal, so nothing was applied (review the change with "
        "fleetguard policy diff FILE, then apply with --yes)"
    )
    assert _history(fleet) == []


@pytest.mark.parametrize(("answer", "applied"), [("y\n", True), ("n\n", False)])
def test_apply_asks_at_a_terminal(
    fleet: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answer: str, applied: bool
) -> None:
    monkeypatch.setattr(policy, "_interactive", lambda: True)
    result = fleet("policy", "apply", _file(tmp_path, "open.cedar", OPEN), stdin=answer)
    assert "10 decisions would change, on 2 of 3 devices" in result.stderr
    assert "apply it as policy version 1?" in result.stderr
    if applied:
        assert result.exit_code == 0, result.output
        assert "\napplied policy version 1: " in result.stdout  # the runner echoes the answer
    else:
        assert result.exit_code == ExitStatus.FAILURE
        assert result.stderr.endswith("nothing was applied\n")
    assert len(_history(fleet)) == int(applied)


def test_apply_sets_keeps_and_clears_the_firmware_policy(fleet: Cli, tmp_path: Path) -> None:
    open_file = _file(tmp_path, "open.cedar", OPEN)
    fleet.ok("policy", "apply", open_file, "--yes", "--firmware-minimum", "cam=1.5",
             "--firmware-minimum", "*=1.0", "--end-of-life", "0.9")  # fmt: skip
    expected = {"minimum": {"*": "1.0", "cam": "1.5"}, "end_of_life": ["0.9"]}
    assert fleet.json("policy", "show")["firmware"] == expected  # type: ignore[index]
    assert "firmware minimum: *=1.0, cam=1.5; end of life: 0.9" in fleet.ok("policy", "show").stderr
    fleet.ok("policy", "apply", open_file, "--yes", "--end-of-life", "cam@1.0")
    expected = {"minimum": {"*": "1.0", "cam": "1.5"}, "end_of_life": ["cam@1.0"]}
    assert fleet.json("policy", "show")["firmware"] == expected  # type: ignore[index]
    fleet.ok("policy", "apply", open_file, "--yes")
    assert fleet.json("policy", "show")["firmware"] == expected  # type: ignore[index]
    fleet.ok("policy", "apply", open_file, "--yes", "--clear-firmware")
    assert fleet.json("policy", "show")["firmware"] == {"minimum": {}, "end_of_life": []}  # type: ignore[index]


def test_a_malformed_firmware_minimum_is_a_usage_error(fleet: Cli, tmp_path: Path) -> None:
    result = fleet("policy", "diff", _file(tmp_path, "open.cedar", OPEN), "--firmware-minimum", "cam")
    assert result.exit_code == ExitStatus.USAGE
    assert "'cam' is not TYPE=VERSION" in result.stderr


def test_a_firmware_version_that_is_not_a_version_is_refused(fleet: Cli, tmp_path: Path) -> None:
    open_file = _file(tmp_path, "open.cedar", OPEN)
    result = fleet("policy", "apply", open_file, "--yes", "--firmware-minimum", "cam=!!")
    assert result.exit_code == ExitStatus.FAILURE
    assert one_line(result.stderr).startswith("error: minimum for 'cam': '!!' is not a version")
    assert _history(fleet) == []


def test_history_before_any_apply_says_the_default_is_in_force(fleet: Cli) -> None:
    result = fleet.ok("policy", "history")
    assert result.stdout == ""
    assert result.stderr == "no policy applied yet: the shipped default (version 0) is in force\n"


# -- decide, facts, signals ------------------------------------------------------------------


def _fields(text: str) -> dict[str, str]:
    fields = {}
    for line in text.splitlines():
        name, _, value = line.partition("  ")
        fields[name.strip()] = value.strip()
    return fields


def test_decide_shows_the_deciding_policies_and_the_inputs(fleet: Cli, tmp_path: Path) -> None:
    denied = _fields(fleet.ok("policy", "decide", "cam-1", "connect").stdout)
    assert denied["outcome"] == "deny"
    assert denied["decided by"] == "untrusted-identity-nothing"
    assert denied["request"] == "connect Broker mqtt"
    assert denied["certificate valid"] == "no"
    assert denied["state"] == "active"
    assert denied["firmware"] == "1.0"

    fleet.ok("policy", "apply", _file(tmp_path, "open.cedar", OPEN), "--yes")
    allowed = _fields(fleet.ok("policy", "decide", "cam-1", "publish").stdout)
    assert (allowed["outcome"], allowed["decided by"]) == ("allow", "active-devices-own-topics")
    assert allowed["request"] == "publish DeviceTopic devices/cam-1/#"
    spare = _fields(fleet.ok("policy", "decide", "spare", "connect").stdout)
    assert (spare["outcome"], spare["decided by"]) == ("deny", "no policy matched")


def test_decide_on_a_topic_filter_decides_its_topic_space(fleet: Cli, tmp_path: Path) -> None:
    fleet.ok("policy", "apply", _file(tmp_path, "open.cedar", OPEN), "--yes")
    decision = fleet.json("policy", "decide", "cam-1", "subscribe", "--topic", "types/cam/status/+")
    assert isinstance(decision, dict)
    assert decision["outcome"] == "allow"
    assert decision["policies"] == ["active-devices-type-topics"]
    assert decision["resource"] == {"kind": "TypeTopic", "name": "types/cam/#", "owner": "cam"}
    assert decision["facts"]["device_type"] == "cam"
    other = fleet.json("policy", "decide", "cam-1", "publish", "--topic", "devices/cam-2/telemetry")
    assert isinstance(other, dict)
    assert (other["outcome"], other["policies"]) == ("deny", [])


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (("connect", "--topic", "devices/cam-1/#", "--broker"), 2, "at most one of --topic and --broker"),
        (("connect", "--topic", "devices/cam-1/#"), 1, "error: connect does not apply to a DeviceTopic"),
        (("publish", "--broker"), 1, "error: publish does not apply to a Broker"),
        (("publish", "--topic", "elsewhere/x"), 1, "error: topic filter 'elsewhere/x' is in no topic space"),
        (("fly",), 2, "'fly' is not one of"),
    ],
)
def test_decide_refuses_malformed_requests(
    fleet: Cli, args: tuple[str, ...], status: int, message: str
) -> None:
    result = fleet("policy", "decide", "cam-1", *args)
    assert result.exit_code == status
    assert message in result.stderr


def test_decide_and_facts_of_an_unknown_device_are_one_line(fleet: Cli) -> None:
    for command in (("decide", "ghost", "connect"), ("facts", "ghost"), ("signals", "ghost", "--risk", "1")):
        result = fleet("policy", *command)
        assert result.exit_code == ExitStatus.FAILURE
        assert one_line(result.stderr) == "error: no device with id 'ghost' (list devices to see valid ids)"


def test_facts_lists_every_input(fleet: Cli) -> None:
    facts = fleet.json("policy", "facts", "cam-2")
    assert facts == {
        "device_id": "cam-2",
        "state": "active",
        "manufacturer": "Acme",
        "model": "",
        "device_type": "cam",
        "site": "",
        "labels": [],
        "certificate_valid": False,
        "revoked": False,
        "posture": {
            "firmware_version": "2.0",
            "firmware_compliant": True,
            "end_of_life": False,
            "known_vulnerable": False,
            "attestation_fresh": False,
        },
        "risk": 0,
    }
    text = _fields(fleet.ok("policy", "facts", "cam-2").stdout)
    assert (text["device"], text["type"], text["risk"], text["site"]) == ("cam-2", "cam", "0", "-")


def test_signals_change_the_facts_and_are_logged(fleet: Cli) -> None:
    result = fleet.ok("policy", "signals", "cam-1", "--risk", "70", "--known-vulnerable", "--attested-now",
                      "--reason", "scanner finding")  # fmt: skip
    assert result.stdout == (
        "recorded signals of device cam-1: risk 70, known vulnerable yes, attestation fresh yes\n"
    )
    posture = fleet.json("policy", "facts", "cam-1")["posture"]  # type: ignore[index]
    assert (posture["known_vulnerable"], posture["attestation_fresh"]) == (True, True)
    fleet.ok("policy", "signals", "cam-1", "--not-known-vulnerable")
    facts = fleet.json("policy", "facts", "cam-1")
    assert isinstance(facts, dict)
    assert (facts["risk"], facts["posture"]["known_vulnerable"]) == (70, False)
    events = fleet.json("events", "list", "--action", "trust.signals_changed")
    assert isinstance(events, list)
    assert [event["reason"] for event in events] == ["scanner finding", ""]


@pytest.mark.parametrize(
    ("args", "message"),
    [((), "give at least one of --risk"), (("--risk", "101"), "less than or equal to 100")],
)
def test_signals_without_a_signal_or_out_of_range_are_usage_errors(
    fleet: Cli, args: tuple[str, ...], message: str
) -> None:
    result = fleet("policy", "signals", "cam-1", *args)
    assert result.exit_code == ExitStatus.USAGE
    assert message in result.stderr


def test_help_explains_the_semantics(cli: Cli) -> None:
    text = " ".join(cli("policy", "--help").stdout.split())
    assert "An empty policy set is refused" in text
    assert "a forbid beats every permit" in text
    assert "fleetguard policy show --default > fleet.cedar" in text
