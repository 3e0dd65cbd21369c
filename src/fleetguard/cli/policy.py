"""``fleetguard policy``: the fleet's zero-trust policy (Cedar) and the decisions made under it.

The policy in force is a versioned Cedar set with a firmware posture policy; version 0 is the shipped
default. The workflow: ``show --default > fleet.cedar``, edit, ``validate``, ``diff`` (every device's
requests decided under both sets; nothing applied), then ``apply``, which shows the diff summary and
asks before it stores a new version. ``apply`` only stores the version it showed the diff against:
if another operator applied in between, it fails (``--expected-version`` pins the version too).

``decide``, ``facts`` and ``signals`` explain and feed single decisions. JSON output has the shapes
of the HTTP API (:mod:`fleetguard.api.schemas_trust`), so scripts read both alike.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from fleetguard.api import schemas_trust as views
from fleetguard.cli.context import cli_context, operator_actor
from fleetguard.cli.exit_status import EXIT_STATUS_EPILOG, ExitStatus
from fleetguard.cli.output import (
    JsonFlag,
    format_time,
    print_fields,
    print_json,
    print_notice,
    print_table,
    progress_bar,
)
from fleetguard.installation import Runtime
from fleetguard.trust import (
    Action,
    Decision,
    DeviceFacts,
    FirmwarePolicy,
    OutcomeChange,
    PolicyConflict,
    PolicySet,
    parse_policy_set,
)
from fleetguard.trust.policy import MAX_POLICY_BYTES
from fleetguard.trust.service import StoredPolicy
from fleetguard.types import utc_now

__all__ = ["app"]

app = typer.Typer(
    name="policy",
    help=(
        "Show, validate, compare and apply the fleet's zero-trust policy (Cedar); explain decisions.\n\n"
        'Every policy needs an @id("..."): decisions name the ids that decided them. A request no '
        "permit matches is denied, and a forbid beats every permit, so quarantine and revocation "
        "forbids cannot be overridden. An empty policy set is refused, never read as allow-all. "
        "Start from: fleetguard policy show --default > fleet.cedar"
    ),
    epilog=EXIT_STATUS_EPILOG,
    no_args_is_help=True,
)

_DIGEST_SHOWN = 12
_NO_POLICY = "no policy matched"

PolicyFile = Annotated[
    Path,
    typer.Argument(
        metavar="FILE",
        exists=True,
        dir_okay=False,
        readable=True,
        show_default=False,
        help=f"The Cedar policy set, UTF-8, at most {MAX_POLICY_BYTES // 1024} KiB.",
    ),
]
DeviceId = Annotated[str, typer.Argument(metavar="DEVICE", help="The device id.", show_default=False)]
FirmwareMinimum = Annotated[
    list[str] | None,
    typer.Option(
        "--firmware-minimum",
        metavar="TYPE=VERSION",
        help="Minimum firmware of a device type (* for any type); repeat. Replaces the minimums in force.",
    ),
]
EndOfLife = Annotated[
    list[str] | None,
    typer.Option(
        "--end-of-life",
        metavar="[TYPE@]VERSION",
        help="A firmware version at end of life (of one type with TYPE@); repeat. "
        "Replaces the list in force.",
    ),
]
ClearFirmware = Annotated[
    bool,
    typer.Option(
        "--clear-firmware",
        help="Start from no firmware policy instead of the one in force (then add the options above).",
    ),
]


@app.command("show")
def show_policy(
    ctx: typer.Context,
    version: Annotated[
        int | None,
        typer.Option("--version", min=0, metavar="N", help="This version instead of the one in force."),
    ] = None,
    default: Annotated[bool, typer.Option("--default", help="The shipped default (version 0).")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Print the Cedar text in force (or of --version N, or the --default).

    The text goes to stdout, so that it can be saved, edited and applied again; its version, digest,
    who applied it when, and the firmware policy go to stderr (all of them in one object with --json).
    """
    if default and version is not None:
        raise typer.BadParameter("give at most one of --version N and --default")
    number = 0 if default else version
    with cli_context(ctx).runtime() as runtime:
        stored = runtime.trust.policy() if number is None else runtime.trust.version(number)
    if as_json:
        print_json(views.PolicyView.of(stored).model_dump(mode="json"))
        return
    text = stored.policies.text
    typer.echo(text, nl=not text.endswith("\n"))
    print_notice(_describe(stored))
    print_notice(_describe_firmware(stored.firmware))


@app.command("validate")
def validate_policy(file: PolicyFile) -> None:
    """Parse FILE and validate it against the schema; store nothing (no installation is needed).

    An error prints "error: line L, column C: ..." and exits 1.
    """
    policies = parse_policy_set(_read_policy(file))
    typer.echo(f"valid: {_count(policies)} ({', '.join(policies.ids)}), sha256 {policies.digest}")


@app.command("diff")
def diff_policy(  # noqa: PLR0917 - one parameter per option; typer passes them by keyword
    ctx: typer.Context,
    file: PolicyFile,
    firmware_minimum: FirmwareMinimum = None,
    end_of_life: EndOfLife = None,
    clear_firmware: ClearFirmware = False,
    as_json: JsonFlag = False,
) -> None:
    """Show which decisions FILE would change across the fleet; nothing is applied.

    Every device's requests (connect; publish and subscribe on its own and its type's topic spaces)
    are decided under the policy in force and under FILE; each request whose outcome changes is
    printed with the policies deciding each side ("no policy matched" is a deny by default), then a
    summary. --firmware-minimum, --end-of-life and --clear-firmware compare a new firmware policy too.
    """
    text = _read_policy(file)
    parse_policy_set(text)  # an invalid file fails before the fleet is read
    with cli_context(ctx).runtime() as runtime:
        current = runtime.trust.policy()
        firmware = _firmware(current.firmware, firmware_minimum, end_of_life, clear=clear_firmware)
        changes, devices = _diff(runtime, text, firmware)
    if as_json:
        print_json(_diff_view(current, changes, devices).model_dump(mode="json"))
        return
    if changes:
        print_table(
            ("device", "action", "resource", "outcome", "decided by"),
            [_change_row(change) for change in changes],
            empty="",
        )
    typer.echo(f"{_summary(changes, devices)}; nothing was applied")


@app.command("apply")
def apply_policy(  # noqa: PLR0917 - one parameter per option; typer passes them by keyword
    ctx: typer.Context,
    file: PolicyFile,
    reason: Annotated[str, typer.Option("--reason", help="Why: recorded in the event log.")] = "",
    expected_version: Annotated[
        int | None,
        typer.Option(
            "--expected-version",
            min=0,
            metavar="N",
            help="Refuse unless version N is in force (policy show).",
        ),
    ] = None,
    firmware_minimum: FirmwareMinimum = None,
    end_of_life: EndOfLife = None,
    clear_firmware: ClearFirmware = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Apply without asking (scripts).")] = False,
) -> None:
    """Validate FILE, show what it changes, ask, and make it the new version in force.

    Without --yes the question needs a terminal: from a script, review with `policy diff` and pass
    --yes. Nothing is stored if FILE is invalid, the answer is no, or another version was applied
    since the change was shown. The firmware options work as in `policy diff`.
    """
    text = _read_policy(file)
    policies = parse_policy_set(text)
    if not yes and not _interactive():
        print_notice(
            "error: stdin is not a terminal, so nothing was applied (review the change with "
            "fleetguard policy diff FILE, then apply with --yes)"
        )
        raise typer.Exit(ExitStatus.USAGE)
    with cli_context(ctx).runtime() as runtime:
        current = runtime.trust.policy()
        if expected_version is not None and expected_version != current.version:
            raise PolicyConflict(
                f"policy version {current.version} is in force, not {expected_version}",
                hint="review fleetguard policy diff against the current version and apply again",
            )
        firmware = _firmware(current.firmware, firmware_minimum, end_of_life, clear=clear_firmware)
        changes, devices = _diff(runtime, text, firmware)
        print_notice(_summary(changes, devices))
        if not yes and not typer.confirm(f"apply it as policy version {current.version + 1}?", err=True):
            print_notice("nothing was applied")
            raise typer.Exit(ExitStatus.FAILURE)
        stored = runtime.trust.apply(
            text,
            actor=operator_actor(),
            reason=reason,
            firmware=firmware,
            expected_version=current.version,  # the version the diff was shown against
        )
    typer.echo(f"applied policy version {stored.version}: {_count(policies)}, sha256 {policies.digest}")


@app.command("history")
def policy_history(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="At most this many.")] = 50,
    as_json: JsonFlag = False,
) -> None:
    """List the applied policy versions, newest first (the shipped default, version 0, is not stored)."""
    with cli_context(ctx).runtime() as runtime:
        history = runtime.trust.history(limit=limit)
    if as_json:
        print_json([views.PolicySummary.of(stored).model_dump(mode="json") for stored in history])
        return
    print_table(
        ("version", "applied", "actor", "policies", "sha256", "reason"),
        [
            (
                s.version,
                format_time(s.created_at),
                s.actor,
                len(s.policies.ids),
                s.policies.digest[:_DIGEST_SHOWN],
                s.reason,
            )
            for s in history
        ],
        empty="no policy applied yet: the shipped default (version 0) is in force",
    )


@app.command("decide")
def decide_request(  # noqa: PLR0917 - one parameter per option; typer passes them by keyword
    ctx: typer.Context,
    device_id: DeviceId,
    action: Annotated[Action, typer.Argument(metavar="ACTION", help="connect, publish or subscribe.")],
    topic: Annotated[
        str | None,
        typer.Option(
            "--topic",
            metavar="FILTER",
            help="A topic filter under devices/<id>/ or types/<type>/: decided on the topic space it lies "
            "in (default: the device's own, devices/<id>/#).",
        ),
    ] = None,
    broker: Annotated[
        bool, typer.Option("--broker", help="Decide on the broker (default for connect).")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Decide one request of DEVICE under the policy in force and show why.

    Prints the outcome, the policies that decided it (the permit that allowed it, or every forbid that
    denied it), and every input used, as the enforcement points would get it. Nothing is recorded.
    """
    if broker and topic is not None:
        raise typer.BadParameter("give at most one of --topic and --broker")
    resource = (
        views.broker_resource(device_id) if broker else views.requested_resource(device_id, action, topic)
    )
    with cli_context(ctx).runtime() as runtime:
        decision = runtime.trust.decide(device_id, action, resource)
    if as_json:
        print_json(views.DecisionView.of(decision).model_dump(mode="json"))
        return
    print_fields([*_decision_fields(decision), *_fact_fields(decision.device)])


@app.command("facts")
def device_facts(ctx: typer.Context, device_id: DeviceId, as_json: JsonFlag = False) -> None:
    """Print every input decisions about DEVICE use: identity, state, posture, risk, inventory."""
    with cli_context(ctx).runtime() as runtime:
        facts = runtime.trust.facts(device_id)
    if as_json:
        print_json(views.FactsView.of(facts).model_dump(mode="json"))
        return
    print_fields([("device", facts.device_id), *_fact_fields(facts)])


@app.command("signals")
def report_signals(  # noqa: PLR0917 - one parameter per option; typer passes them by keyword
    ctx: typer.Context,
    device_id: DeviceId,
    risk: Annotated[
        int | None, typer.Option("--risk", min=0, max=100, metavar="N", help="Behaviour risk, 0-100.")
    ] = None,
    known_vulnerable: Annotated[
        bool | None,
        typer.Option(
            "--known-vulnerable/--not-known-vulnerable", help="Whether its firmware is known vulnerable."
        ),
    ] = None,
    attested_now: Annotated[
        bool, typer.Option("--attested-now", help="Its attestation was verified now (fresh for 24 hours).")
    ] = False,
    reason: Annotated[str, typer.Option("--reason", help="Why: recorded in the event log.")] = "",
) -> None:
    """Record trust signals of DEVICE; decisions use them at once. Omitted signals stay as they are."""
    if risk is None and known_vulnerable is None and not attested_now:
        raise typer.BadParameter(
            "give at least one of --risk, --known-vulnerable, --not-known-vulnerable and --attested-now"
        )
    with cli_context(ctx).runtime() as runtime:
        runtime.trust.report_signals(
            device_id, actor=operator_actor(), risk=risk, known_vulnerable=known_vulnerable,
            attested_at=utc_now() if attested_now else None, reason=reason,
        )  # fmt: skip
        facts = runtime.trust.facts(device_id)
    posture = facts.posture
    typer.echo(
        f"recorded signals of device {facts.device_id}: risk {facts.risk}, known vulnerable "
        f"{_yes(posture.known_vulnerable)}, attestation fresh {_yes(posture.attestation_fresh)}"
    )


# -- internals -------------------------------------------------------------------------------


def _read_policy(path: Path) -> str:
    with path.open("rb") as file:
        data = file.read(MAX_POLICY_BYTES + 1)  # bounded: the file may be anything
    return views.policy_text(data)


def _interactive() -> bool:
    """Return whether a person can answer a question on stdin."""
    return sys.stdin.isatty()


def _firmware(
    current: FirmwarePolicy,
    minimum: Sequence[str] | None,
    end_of_life: Sequence[str] | None,
    *,
    clear: bool,
) -> FirmwarePolicy | None:
    """Return the firmware policy the options make of ``current``; None when they change nothing."""
    if not clear and not minimum and not end_of_life:
        return None
    base = FirmwarePolicy() if clear else current
    return FirmwarePolicy(
        _minimums(minimum) if minimum else base.minimum,
        frozenset(end_of_life) if end_of_life else base.end_of_life,
    )


def _minimums(values: Sequence[str]) -> dict[str, str]:
    minimums: dict[str, str] = {}
    for value in values:
        device_type, sep, version = value.partition("=")
        if not sep or not device_type or not version:
            raise typer.BadParameter(f"{value!r} is not TYPE=VERSION", param_hint="'--firmware-minimum'")
        minimums[device_type] = version
    return minimums


def _diff(runtime: Runtime, text: str, firmware: FirmwarePolicy | None) -> tuple[list[OutcomeChange], int]:
    """Return the changed decisions and how many devices were evaluated, with a progress bar on stderr."""
    evaluated = 0
    with progress_bar() as progress:
        task = progress.add_task("deciding", total=runtime.inventory.count())

        def advance(done: int) -> None:
            nonlocal evaluated
            evaluated = done
            progress.update(task, completed=done)

        changes = runtime.trust.diff(text, firmware=firmware, progress=advance)
    return changes, evaluated


def _diff_view(current: StoredPolicy, changes: list[OutcomeChange], devices: int) -> views.PolicyDiff:
    return views.PolicyDiff(
        current_version=current.version,
        devices=devices,
        changed_devices=len({change.device_id for change in changes}),
        changed_decisions=len(changes),
        changes=[views.OutcomeChangeView.of(change) for change in changes],
    )


def _change_row(change: OutcomeChange) -> tuple[str, ...]:
    return (
        change.device_id,
        change.action.value,
        change.resource,
        f"{change.before} → {change.after}",
        f"{_ids(change.before_policies)} → {_ids(change.after_policies)}",
    )


def _summary(changes: list[OutcomeChange], devices: int) -> str:
    changed = len({change.device_id for change in changes})
    return f"{_plural(len(changes), 'decision')} would change, on {changed} of {_plural(devices, 'device')}"


def _describe(stored: StoredPolicy) -> str:
    what = f"policy version {stored.version} ({_count(stored.policies)}, sha256 {stored.policies.digest})"
    if stored.created_at is None:
        return f"{what}: the shipped default"
    reason = f": {stored.reason}" if stored.reason else ""
    return f"{what}, applied by {stored.actor} at {format_time(stored.created_at)}{reason}"


def _describe_firmware(firmware: FirmwarePolicy) -> str:
    minimum = ", ".join(f"{kind}={version}" for kind, version in sorted(firmware.minimum.items()))
    end_of_life = ", ".join(sorted(firmware.end_of_life))
    return f"firmware minimum: {minimum or 'none'}; end of life: {end_of_life or 'none'}"


def _decision_fields(decision: Decision) -> list[tuple[str, object]]:
    resource = decision.resource
    return [
        ("outcome", decision.outcome.value),
        ("decided by", _ids(decision.policies)),
        ("errors", "; ".join(decision.errors) or None),
        ("request", f"{decision.action.value} {resource.kind.value} {resource.name}"),
        ("hour (UTC)", decision.context.hour),
        ("policy sha256", decision.policy_digest),
    ]


def _fact_fields(facts: DeviceFacts) -> list[tuple[str, object]]:
    posture = facts.posture
    return [
        ("state", facts.state),
        ("manufacturer", facts.manufacturer),
        ("model", facts.model),
        ("type", facts.device_type or None),
        ("site", facts.site or None),
        ("labels", ", ".join(facts.labels) or None),
        ("certificate valid", _yes(facts.certificate_valid)),
        ("revoked", _yes(facts.revoked)),
        ("firmware", posture.firmware_version or None),
        ("firmware compliant", _yes(posture.firmware_compliant)),
        ("end of life", _yes(posture.end_of_life)),
        ("known vulnerable", _yes(posture.known_vulnerable)),
        ("attestation fresh", _yes(posture.attestation_fresh)),
        ("risk", facts.risk),
    ]


def _ids(policies: Sequence[str]) -> str:
    return ", ".join(policies) or _NO_POLICY


def _count(policies: PolicySet) -> str:
    return _plural(len(policies.ids), "policy", "policies")


def _plural(count: int, one: str, many: str | None = None) -> str:
    return f"{count} {one if count == 1 else many or one + 's'}"


def _yes(value: bool) -> str:
    return "yes" if value else "no"
