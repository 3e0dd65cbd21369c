"""``fleetguard segment``: network segmentation with MUD profiles (RFC 8520) enforced by nftables.

The workflow: store the devices' MUD profiles (``profile add``, or ``profile learn`` from a capture
taken while a device worked normally), bind each device to its addresses (``bind``), describe the
local networks and controllers MUD files leave to the administrator (``context set``), check what
the policy would block on recorded traffic (``simulate``; nothing is applied), then ``apply``, which
checks the ruleset with ``nft -c`` and applies it in one transaction. ``quarantine-sync``, ``detect``
and ``counters`` look after the ruleset in force.

JSON output has the shapes of the HTTP API (:mod:`fleetguard.api.schemas_segment`), so scripts read
both alike.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, BinaryIO, assert_never

import typer
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from fleetguard.api import schemas_segment as views
from fleetguard.cli.context import cli_context, operator_actor
from fleetguard.cli.exit_status import EXIT_STATUS_EPILOG
from fleetguard.cli.output import (
    JsonFlag,
    format_time,
    print_fields,
    print_json,
    print_notice,
    print_records,
    print_table,
    progress_bar,
)
from fleetguard.errors import FleetguardError, InvalidInput
from fleetguard.segment.capture import read_capture
from fleetguard.segment.fetch import HttpsFetcher, fetch_profile
from fleetguard.segment.flows import ObservedTraffic, assemble_flows, read_flows_jsonl, read_zeek_conn_csv
from fleetguard.segment.learning import DeviceMatch, LearnedProfile, learn_profile
from fleetguard.segment.model import Flow, MudProfile
from fleetguard.segment.mud import MAX_MUD_BYTES, parse_mud
from fleetguard.segment.service import ApplyResult, SignaturePolicy, StoredProfile, parse_context
from fleetguard.segment.signature import MAX_SIGNATURE_BYTES, MAX_TRUSTED_CERTIFICATES
from fleetguard.segment.simulation import FlowVerdict, Simulation
from fleetguard.types import utc_now

__all__ = ["app"]

app = typer.Typer(
    name="segment",
    help=(
        "Segment the network with MUD profiles (RFC 8520) compiled to one nftables ruleset.\n\n"
        "A device is managed once it is bound to its addresses (segment bind); its policy is the MUD "
        "profile of its own MUD URL or else its type's. A managed device without a stored profile is "
        "denied everything. Check a policy on recorded traffic with segment simulate (nothing is applied), "
        "then segment apply (nft -c, then nft -f in one transaction; nft needs root)."
    ),
    epilog=EXIT_STATUS_EPILOG,
    no_args_is_help=True,
)
profile_app = typer.Typer(
    name="profile",
    help="Add, list, show, remove and learn MUD profiles. A refused file stores nothing.",
    epilog=EXIT_STATUS_EPILOG,
    no_args_is_help=True,
)
context_app = typer.Typer(
    name="context",
    help=(
        "Show or replace the MUD context: the local networks and controllers that the abstract peers of "
        "MUD files (local-networks, controller, my-controller; RFC 8520 section 4) resolve to."
    ),
    epilog=EXIT_STATUS_EPILOG,
    no_args_is_help=True,
)
signers_app = typer.Typer(
    name="signers",
    help="Show or set the trusted MUD signers, and whether profiles must be signed.",
    epilog=EXIT_STATUS_EPILOG,
    no_args_is_help=True,
)
app.add_typer(profile_app)
app.add_typer(context_app)
app.add_typer(signers_app)

_DIGEST_SHOWN = 12
_MAX_PEM_BYTES = 1024 * 1024
_PROGRESS_STEP = 64 * 1024  # bytes read between progress updates
_DEFAULT_SYSTEMINFO = "learned by fleetguard from observed traffic"
_PROTOCOL_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "ipv6-icmp", 132: "sctp"}
_PORTED = frozenset({6, 17, 132})


class FlowFormat(enum.StrEnum):
    """How recorded traffic is stored."""

    PCAP = "pcap"  # a pcap or pcapng capture
    ZEEK = "zeek"  # Zeek conn.log records as CSV with a header line
    JSONL = "jsonl"  # fleetguard's flow records, one JSON object a line


_SUFFIX_FORMATS = {
    ".pcap": FlowFormat.PCAP,
    ".pcapng": FlowFormat.PCAP,
    ".cap": FlowFormat.PCAP,
    ".csv": FlowFormat.ZEEK,
    ".jsonl": FlowFormat.JSONL,
    ".ndjson": FlowFormat.JSONL,
}

MudFile = Annotated[
    Path,
    typer.Argument(
        metavar="FILE",
        exists=True,
        dir_okay=False,
        readable=True,
        show_default=False,
        help=f"The MUD file (JSON), at most {MAX_MUD_BYTES // 1024} KiB.",
    ),
]
MudUrl = Annotated[str, typer.Argument(metavar="URL", help="The profile's MUD URL.", show_default=False)]
DeviceId = Annotated[str, typer.Argument(metavar="DEVICE_ID", help="The device id.", show_default=False)]


# -- profiles --------------------------------------------------------------------------------


@profile_app.command("add")
def add_profile(
    ctx: typer.Context,
    file: MudFile,
    signature: Annotated[
        Path | None,
        typer.Option(
            "--signature",
            metavar="SIG.p7s",
            exists=True,
            dir_okay=False,
            readable=True,
            help="The detached CMS signature (DER) of FILE, as published at its mud-signature URL; "
            "required when the installation requires signed profiles.",
        ),
    ] = None,
) -> None:
    """Parse FILE, check its signature, and store it in place of any profile of the same MUD URL.

    An invalid file fails with the JSON pointer of the offending node (e.g. /ietf-mud:mud/mud-url)
    and stores nothing; so does a missing, malformed or untrusted signature. Devices use the profile
    from the next apply.
    """
    document = _read_bounded(file, MAX_MUD_BYTES)
    signed = None if signature is None else _read_bounded(signature, MAX_SIGNATURE_BYTES)
    with cli_context(ctx).runtime() as runtime:
        stored = runtime.segment.add_profile(document, actor=operator_actor(), signature=signed)
    typer.echo(f"added MUD profile {stored.profile.url}: {_describe(stored)}")


@profile_app.command("fetch")
def fetch_profiles(
    ctx: typer.Context,
    urls: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[URL]...",
            help="MUD URLs to fetch; none: every device's and device type's "
            "MUD URL that has no stored profile.",
            show_default=False,
        ),
    ] = None,
    ca_file: Annotated[
        Path | None,
        typer.Option(
            "--ca-file",
            exists=True,
            dir_okay=False,
            readable=True,
            help="Trust these CA certificates (PEM) for the MUD servers instead of the system's.",
        ),
    ] = None,
) -> None:
    """Fetch MUD files (and their signatures) over https, as a MUD manager does, and store them.

    Only https; no redirects; at most 1 MiB a file. A file must name the URL it was fetched from as
    its mud-url. Its mud-signature is fetched too and checked as `profile add --signature` does.
    Each URL's outcome is printed; exit 1 if any failed (those that succeeded are stored).
    """
    fetcher = HttpsFetcher(ca_file=ca_file)
    failed = 0
    with cli_context(ctx).runtime() as runtime:
        wanted = list(urls or ()) or runtime.segment.missing_profiles()
        if not wanted:
            typer.echo("every MUD URL in the fleet has a stored profile")
            return
        for url in wanted:
            try:
                fetched = fetch_profile(url, fetcher)
                stored = runtime.segment.add_profile(
                    fetched.document, actor=operator_actor(), signature=fetched.signature, source="fetched"
                )
            except FleetguardError as exc:
                failed += 1
                typer.echo(f"{url}: {exc}", err=True)
                continue
            typer.echo(f"fetched {url}: {_describe(stored)}")
    if failed:
        raise typer.Exit(1)


@profile_app.command("list")
def list_profiles(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List the stored MUD profiles, by MUD URL."""
    with cli_context(ctx).runtime() as runtime:
        stored = runtime.segment.profiles()
    if as_json:
        print_json([views.ProfileSummary.of(s).model_dump(mode="json") for s in stored])
        return
    print_table(
        ("url", "model", "aces", "source", "signer", "added"),
        [
            (
                s.profile.url,
                _model(s.profile),
                len(s.profile.aces),
                s.source,
                s.signer,
                format_time(s.added_at),
            )
            for s in stored
        ],
        empty="no MUD profiles: add one with fleetguard segment profile add FILE",
    )


@profile_app.command("show")
def show_profile(ctx: typer.Context, url: MudUrl, as_json: JsonFlag = False) -> None:
    """Print a stored profile's header fields and its access-control entries."""
    with cli_context(ctx).runtime() as runtime:
        stored = runtime.segment.profile(url)
    view = views.ProfileView.of(stored)
    if as_json:
        print_json(view.model_dump(mode="json"))
        return
    print_fields(
        [
            ("url", view.url),
            ("model", _model(stored.profile)),
            ("systeminfo", view.systeminfo or None),
            ("sha256", view.digest),
            ("last update", format_time(view.last_update)),
            ("source", view.source),
            ("signer", view.signer),
            ("added", f"{format_time(view.added_at)} by {view.actor}"),
        ]
    )
    print_table(
        ("ace", "direction", "family", "protocol", "peers", "remote ports", "device ports", "initiated"),
        [
            (
                e.name,
                e.direction,
                e.family,
                _protocol(e.protocol),
                ", ".join(e.peers) or "any",
                ", ".join(e.remote_ports),
                ", ".join(e.device_ports),
                e.initiated,
            )
            for e in view.entries
        ],
        empty="no access-control entries: the device may do nothing",
    )


@profile_app.command("remove")
def remove_profile(ctx: typer.Context, url: MudUrl) -> None:
    """Remove a stored profile; the devices using it are denied everything from the next apply."""
    with cli_context(ctx).runtime() as runtime:
        runtime.segment.remove_profile(url, actor=operator_actor())
    typer.echo(f"removed MUD profile {url}; its devices are denied everything from the next apply")


@profile_app.command("learn")
def learn(  # noqa: PLR0917 - one parameter per option; typer passes them by keyword
    ctx: typer.Context,
    capture: Annotated[
        Path,
        typer.Argument(
            metavar="CAPTURE",
            exists=True,
            dir_okay=False,
            readable=True,
            show_default=False,
            help="A pcap or pcapng capture (or flow records, see --flows-format) of the device at work.",
        ),
    ],
    mud_url: Annotated[
        str, typer.Option("--mud-url", metavar="URL", help="The profile's MUD URL (https://).")
    ],
    device: Annotated[
        str | None, typer.Option("--device", metavar="IP", help="The device's IP address.")
    ] = None,
    mac: Annotated[
        str | None,
        typer.Option(
            "--mac",
            metavar="MAC",
            help="The device's MAC address (pcap only): every address it sent from is the device's.",
        ),
    ] = None,
    local_network: Annotated[
        list[str] | None,
        typer.Option(
            "--local-network",
            metavar="CIDR",
            help="A local prefix; peers inside it become local-networks (RFC 8520 8.5). Repeat.",
        ),
    ] = None,
    gateway: Annotated[
        str | None,
        typer.Option(
            "--gateway", metavar="IP", help="The gateway: DNS and NTP to it become the DNS/NTP controllers."
        ),
    ] = None,
    systeminfo: Annotated[
        str, typer.Option("--systeminfo", metavar="TEXT", help="What the device is (at most 60 characters).")
    ] = _DEFAULT_SYSTEMINFO,
    output: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            metavar="OUT.json",
            dir_okay=False,
            help="Write the profile here (default: stdout, with the summary on stderr).",
        ),
    ] = None,
    flows_format: Annotated[
        FlowFormat | None,
        typer.Option(
            "--flows-format",
            help="CAPTURE holds flow records: zeek (conn.log as CSV) or jsonl (fleetguard's). "
            "Default: a packet capture.",
        ),
    ] = None,
    add: Annotated[
        bool, typer.Option("--add", help='Also store the profile, with source "learned".')
    ] = False,
) -> None:
    """Learn a MUD profile allowing exactly what the device did in CAPTURE (as MUDgee does).

    Remote peers become the DNS names the device looked them up by, local-networks, the DNS/NTP
    controllers (traffic to --gateway) or their addresses. A device with no flows in CAPTURE, or a
    profile of more than 512 entries, is an error: nothing is written then. Review the profile (and
    segment simulate it) before you apply it.
    """
    match = _device_match(device, mac)
    networks = [_network(text) for text in local_network or ()]
    traffic = _read_traffic(capture, flows_format or FlowFormat.PCAP)
    learned = learn_profile(
        traffic, match, mud_url=mud_url, local_networks=networks, gateway=_address(gateway, "--gateway"),
        systeminfo=systeminfo, now=utc_now(),
    )  # fmt: skip
    if output is None:
        typer.echo(learned.document.decode("utf-8"), nl=False)
    else:
        output.write_bytes(learned.document)
    for line in _learning_summary(learned, mud_url, output):
        typer.echo(line, err=output is None)
    if add:
        with cli_context(ctx).runtime() as runtime:
            stored = runtime.segment.add_profile(learned.document, actor=operator_actor(), source="learned")
        typer.echo(f"added MUD profile {stored.profile.url}: {_describe(stored)}", err=output is None)


# -- bindings --------------------------------------------------------------------------------


@app.command("bind")
def bind(
    ctx: typer.Context,
    device_id: DeviceId,
    ipv4: Annotated[
        str | None, typer.Option("--ipv4", metavar="A", help="The device's IPv4 address.")
    ] = None,
    ipv6: Annotated[
        str | None, typer.Option("--ipv6", metavar="A", help="The device's IPv6 address.")
    ] = None,
    mac: Annotated[
        str | None,
        typer.Option("--mac", metavar="M", help="Its MAC address: then checked at layer 2 when bridged too."),
    ] = None,
) -> None:
    """Bind DEVICE_ID to its addresses (an IPv4 or IPv6 one at least), replacing its binding.

    The device is managed from the next apply. An address another device holds is refused.
    """
    with cli_context(ctx).runtime() as runtime:
        binding = runtime.segment.bind(device_id, actor=operator_actor(), ipv4=ipv4, ipv6=ipv6, mac=mac)
    addresses = ", ".join(str(a) for a in (binding.ipv4, binding.ipv6, binding.mac) if a is not None)
    typer.echo(f"bound device {binding.device_id} to {addresses}; it is managed from the next apply")


@app.command("bindings")
def list_bindings(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List the managed devices and their addresses, by device id."""
    with cli_context(ctx).runtime() as runtime:
        bindings = runtime.segment.bindings()
    print_records(
        [views.BindingView.of(b).model_dump(mode="json") for b in bindings],
        [("device_id", "device"), ("ipv4", "ipv4"), ("ipv6", "ipv6"), ("mac", "mac")],
        as_json=as_json,
        empty="no device is bound: fleetguard segment bind DEVICE_ID --ipv4 A",
    )


# -- context and signers ---------------------------------------------------------------------


@context_app.command("set")
def set_context(
    ctx: typer.Context,
    local_network: Annotated[
        list[str] | None,
        typer.Option("--local-network", metavar="CIDR", help="A local prefix (local-networks). Repeat."),
    ] = None,
    controller: Annotated[
        list[str] | None,
        typer.Option(
            "--controller",
            metavar="URI=ADDR[,ADDR]",
            help="The addresses of a controller class, e.g. urn:ietf:params:mud:dns=192.168.1.1. Repeat.",
        ),
    ] = None,
    my_controller: Annotated[
        list[str] | None,
        typer.Option(
            "--my-controller",
            metavar="MUDURL=ADDR[,ADDR]",
            help="The addresses of the my-controller of devices with that MUD URL. Repeat.",
        ),
    ] = None,
) -> None:
    """Replace the MUD context as a whole (what is not given is emptied); used from the next apply."""
    if not local_network and not controller and not my_controller:
        raise typer.BadParameter("give at least one of --local-network, --controller and --my-controller")
    context = parse_context(
        local_network or [],
        _assignments(controller or [], "--controller"),
        _assignments(my_controller or [], "--my-controller"),
    )
    with cli_context(ctx).runtime() as runtime:
        runtime.segment.set_context(context, actor=operator_actor())
    view = views.ContextView.of(context)
    typer.echo(
        f"set the MUD context: {len(view.local_networks)} local networks, {len(view.controllers)} "
        f"controller classes, {len(view.my_controllers)} my-controllers; used from the next apply"
    )


@context_app.command("show")
def show_context(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Print the local networks and controllers in force."""
    with cli_context(ctx).runtime() as runtime:
        view = views.ContextView.of(runtime.segment.context())
    if as_json:
        print_json(view.model_dump(mode="json"))
        return
    print_fields(
        [
            ("local networks", ", ".join(view.local_networks) or None),
            *(("controller", f"{uri} = {', '.join(a)}") for uri, a in view.controllers.items()),
            *(("my-controller", f"{url} = {', '.join(a)}") for url, a in view.my_controllers.items()),
        ]
    )


@signers_app.command("set")
def set_signers(
    ctx: typer.Context,
    pem: Annotated[
        Path,
        typer.Argument(
            metavar="PEM",
            exists=True,
            dir_okay=False,
            readable=True,
            show_default=False,
            help="The trusted signers' (or their CAs') certificates, PEM; replaces the trusted signers.",
        ),
    ],
    require: Annotated[
        bool | None,
        typer.Option(
            "--require/--no-require", help="Require every profile to be signed (default: as it is now)."
        ),
    ] = None,
) -> None:
    """Trust the certificates in PEM as MUD signers (RFC 8520 section 13.2); profiles signed by
    others are refused. Profiles already stored are not checked again."""
    data = _read_bounded(pem, _MAX_PEM_BYTES)
    certificates = _certificates(data)
    with cli_context(ctx).runtime() as runtime:
        required = runtime.segment.signature_policy().required if require is None else require
        runtime.segment.set_signature_policy(SignaturePolicy(required, data), actor=operator_actor())
    typer.echo(
        f"trusted MUD signers: {len(certificates)} certificates; signatures required: {_yes(required)}"
    )


@signers_app.command("show")
def show_signers(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List the trusted MUD signers and say whether signatures are required."""
    with cli_context(ctx).runtime() as runtime:
        policy = runtime.segment.signature_policy()
    signers = [_signer_record(c) for c in (_certificates(policy.trusted_pem) if policy.trusted_pem else [])]
    if as_json:
        print_json({"required": policy.required, "signers": signers})
        return
    print_records(
        signers,
        [
            ("subject", "subject"),
            ("issuer", "issuer"),
            ("not_valid_after", "valid until"),
            ("sha256", "sha256"),
        ],
        as_json=False,
        empty="no trusted MUD signers",
    )
    print_notice(f"signatures required: {_yes(policy.required)}")


# -- ruleset ---------------------------------------------------------------------------------


@app.command("apply")
def apply_ruleset(
    ctx: typer.Context,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Compile and check with nft -c only; record nothing.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Compile the fleet's profiles, check the ruleset with nft -c and apply it in one transaction.

    When nft refuses it (or is not there, or lacks root), the ruleset in force is unchanged and no
    generation is recorded. Prints the devices, profiles, set elements, devices without a profile
    (denied everything) and peers that allowed nothing.
    """
    with cli_context(ctx).runtime() as runtime:
        result = runtime.segment.apply(actor=operator_actor(), dry_run=dry_run)
    if as_json:
        print_json(views.ApplyView.of(result).model_dump(mode="json"))
        return
    print_fields(_apply_fields(result))


@app.command("history")
def ruleset_history(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="At most this many.")] = 20,
    as_json: JsonFlag = False,
) -> None:
    """List the applied generations of the ruleset, newest first (dry runs are not recorded)."""
    with cli_context(ctx).runtime() as runtime:
        entries = [views.HistoryEntry.of(*row) for row in runtime.segment.history(limit=limit)]
    if as_json:
        print_json([e.model_dump(mode="json") for e in entries])
        return
    print_table(
        ("generation", "applied", "actor", "devices", "profiles", "quarantined", "sha256"),
        [
            (
                e.generation,
                format_time(e.applied_at),
                e.actor,
                e.devices,
                e.profiles,
                e.quarantined,
                e.digest[:_DIGEST_SHOWN],
            )
            for e in entries
        ],
        empty="no ruleset applied yet",
    )


@app.command("simulate")
def simulate_flows(
    ctx: typer.Context,
    flows: Annotated[
        Path,
        typer.Option(
            "--flows",
            metavar="FILE",
            exists=True,
            dir_okay=False,
            readable=True,
            help="Recorded traffic: a capture or flow records.",
        ),
    ],
    flows_format: Annotated[
        FlowFormat | None,
        typer.Option(
            "--format",
            help="How FILE is stored (default from its suffix: .pcap/.pcapng/.cap pcap, .csv zeek, "
            ".jsonl/.ndjson jsonl).",
        ),
    ] = None,
    profile: Annotated[
        list[Path] | None,
        typer.Option(
            "--profile",
            metavar="FILE.json",
            exists=True,
            dir_okay=False,
            readable=True,
            help="A proposed MUD file, used in place of the stored profile of its MUD URL (not stored). "
            "Repeat.",
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Show which recorded flows the policy would block, per device; nothing is stored or applied.

    Each flow is judged as the gateway judges a new connection's first packet, against the compiled
    fleet: the sender's from-device policy if it is managed, the receiver's to-device policy if it
    is. Flows between unmanaged hosts are counted, not judged. Exit status 0 whatever is blocked.
    """
    proposed = [parse_mud(_read_bounded(path, MAX_MUD_BYTES)) for path in profile or ()]
    traffic = _read_traffic(flows, flows_format or _format_of(flows))
    with cli_context(ctx).runtime() as runtime:
        simulation = runtime.segment.simulate(traffic.flows, proposed=proposed)
    if as_json:
        print_json(views.SimulationView.of(simulation, proposed).model_dump(mode="json"))
        return
    print_table(
        ("device", "start", "protocol", "source", "destination", "verdict", "reason"),
        [
            _blocked_row(device, v)
            for device, report in sorted(simulation.devices.items())
            for v in report.blocked
        ],
        empty="",
    )
    typer.echo(f"{_simulation_summary(simulation, proposed)}; nothing was applied")


# -- enforcement -----------------------------------------------------------------------------


@app.command("quarantine-sync")
def quarantine_sync(ctx: typer.Context, device_id: DeviceId) -> None:
    """Put DEVICE_ID's addresses in the quarantine set, or take them out, from its inventory state.

    Quarantined and decommissioned devices are held; others are released. An element update, not a
    reload; running it again changes nothing.
    """
    with cli_context(ctx).runtime() as runtime:
        held = runtime.segment.enforce_state(device_id, actor=operator_actor())
        bound = held or any(b.device_id == device_id for b in runtime.segment.bindings())
    if not bound:
        typer.echo(f"device {device_id} has no binding: nothing to enforce")
    elif held:
        typer.echo(f"device {device_id} is held in quarantine")
    else:
        typer.echo(f"device {device_id} is not in quarantine")


@app.command("detect")
def detect_violations(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Read the flows the gateway dropped (kept an hour) and log each as segment.violation.

    This command is a new process, so it reports and logs every violation currently recorded;
    fleetguard up reports each one only once.
    """
    with cli_context(ctx).runtime() as runtime:
        found = runtime.segment.detect(actor=operator_actor())
    records = [views.ViolationView.of(device, v).model_dump(mode="json") for device, v in found]
    print_records(
        records,
        [("device_id", "device"), ("source", "source"), ("protocol", "protocol"),
         ("destination", "destination"), ("destination_port", "port"), ("expires_s", "expires (s)")],
        as_json=as_json,
        empty="no violations",
    )  # fmt: skip
    if found and not as_json:
        print_notice(f"logged {len(found)} violations as segment.violation")


@app.command("counters")
def counters(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Print each managed address's packet and byte counters from the ruleset in force.

    packets/bytes count the new connections it took part in; denied what its policy dropped;
    quarantine what the quarantine set dropped.
    """
    with cli_context(ctx).runtime() as runtime:
        bindings = runtime.segment.bindings()
        by_set = runtime.segment.counters()
    records = []
    for binding in bindings:
        for address in (binding.ipv4, binding.ipv6):
            if address is None:
                continue
            family = str(address.version)
            seen = by_set.get(f"class{family}", {}).get(str(address), (0, 0))
            denied = by_set.get(f"denied{family}", {}).get(str(address), (0, 0))
            held = by_set.get(f"quarantine{family}", {}).get(str(address), (0, 0))
            records.append(
                {"device_id": binding.device_id, "address": str(address), "packets": seen[0],
                 "bytes": seen[1], "denied_packets": denied[0], "denied_bytes": denied[1],
                 "quarantine_packets": held[0], "quarantine_bytes": held[1]}
            )  # fmt: skip
    print_records(
        records,
        [("device_id", "device"), ("address", "address"), ("packets", "packets"), ("bytes", "bytes"),
         ("denied_packets", "denied packets"), ("denied_bytes", "denied bytes"),
         ("quarantine_packets", "quarantine packets"), ("quarantine_bytes", "quarantine bytes")],
        as_json=as_json,
        empty="no device is bound",
    )  # fmt: skip


# -- internals -------------------------------------------------------------------------------


def _read_bounded(path: Path, limit: int) -> bytes:
    """Read at most ``limit + 1`` bytes: the parsers refuse a file over ``limit`` as too large."""
    with path.open("rb") as file:
        return file.read(limit + 1)


def _describe(stored: StoredProfile) -> str:
    signed = f"signed by {stored.signer}" if stored.signer else "unsigned"
    return f"{len(stored.profile.aces)} ACEs, sha256 {stored.profile.digest[:_DIGEST_SHOWN]}, {signed}"


def _model(profile: MudProfile) -> str:
    return " ".join(p for p in (profile.mfg_name, profile.model_name) if p) or profile.systeminfo


def _protocol(number: int | None) -> str:
    return "any" if number is None else _PROTOCOL_NAMES.get(number, str(number))


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def _device_match(address: str | None, mac: str | None) -> DeviceMatch:
    try:
        return DeviceMatch(address=address, mac=mac)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--device' / '--mac'") from exc


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text)
    except ValueError as exc:
        raise typer.BadParameter(
            f"{text!r} is not a prefix such as 10.0.0.0/8", param_hint="'--local-network'"
        ) from exc


def _address(text: str | None, option: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if text is None:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError as exc:
        raise typer.BadParameter(f"{text!r} is not an IP address", param_hint=f"'{option}'") from exc


def _assignments(values: Sequence[str], option: str) -> dict[str, list[str]]:
    """``KEY=ADDR[,ADDR]`` options as a mapping; a key given twice gets both lists."""
    out: dict[str, list[str]] = {}
    for value in values:
        key, sep, addresses = value.rpartition("=")  # URIs may hold "=", addresses never do
        if not sep or not key or not addresses:
            raise typer.BadParameter(f"{value!r} is not KEY=ADDR[,ADDR]", param_hint=f"'{option}'")
        out.setdefault(key, []).extend(a.strip() for a in addresses.split(",") if a.strip())
    return out


def _certificates(data: bytes) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise InvalidInput(
            "the file holds no PEM certificate", hint="give the signers' certificates as PEM"
        ) from exc
    if len(certificates) > MAX_TRUSTED_CERTIFICATES:
        raise InvalidInput(f"{len(certificates)} certificates; at most {MAX_TRUSTED_CERTIFICATES}")
    return certificates


def _signer_record(certificate: x509.Certificate) -> dict[str, object]:
    return {
        "subject": certificate.subject.rfc4514_string(),
        "issuer": certificate.issuer.rfc4514_string(),
        "not_valid_after": format_time(certificate.not_valid_after_utc),
        "sha256": certificate.fingerprint(hashes.SHA256()).hex(),
    }


def _format_of(path: Path) -> FlowFormat:
    found = _SUFFIX_FORMATS.get(path.suffix.lower())
    if found is None:
        raise typer.BadParameter(
            f"cannot tell the format of {path.name} from its suffix", param_hint="'--format'"
        )
    return found


def _read_traffic(path: Path, flows_format: FlowFormat) -> ObservedTraffic:
    """Read a capture (with a progress bar on stderr) or flow records; raise ``CaptureInvalid``."""
    with path.open("rb") as handle:
        match flows_format:
            case FlowFormat.PCAP:
                return _read_packets(handle, path.stat().st_size)
            case FlowFormat.ZEEK:
                return ObservedTraffic.of_flows(read_zeek_conn_csv(handle))
            case FlowFormat.JSONL:
                return ObservedTraffic.of_flows(read_flows_jsonl(handle))
            case _:
                assert_never(flows_format)


def _read_packets(handle: BinaryIO, size: int) -> ObservedTraffic:
    with progress_bar() as progress:
        task = progress.add_task("reading", total=size)

        def advance(done: int) -> None:
            progress.update(task, completed=done)

        return assemble_flows(read_capture(_CountingReader(handle, advance)))


class _CountingReader:
    """A readable that reports how far it has read, every ``_PROGRESS_STEP`` bytes and at the end."""

    __slots__ = ("_handle", "_on_read", "_read", "_reported")

    def __init__(self, handle: BinaryIO, on_read: Callable[[int], None]) -> None:
        self._handle, self._on_read = handle, on_read
        self._read = self._reported = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self._handle.read(size)
        self._read += len(data)
        if not data or self._read - self._reported >= _PROGRESS_STEP:
            self._reported = self._read
            self._on_read(self._read)
        return data


def _learning_summary(learned: LearnedProfile, mud_url: str, output: Path | None) -> Iterator[str]:
    s = learned.summary
    yield f"learned a MUD profile for {mud_url}" + (f", written to {output}" if output else "")
    yield f"flows: {s.flows_used} of {s.flows_seen} with the device ({', '.join(s.device_addresses)})"
    yield f"ACEs: {s.aces_from_device} from the device, {s.aces_to_device} to the device"
    yield f"DNS names: {', '.join(s.names) or 'none'} ({s.answers_seen} DNS answers seen)"


def _apply_fields(result: ApplyResult) -> list[tuple[str, object]]:
    generation = "0 (dry run: checked with nft -c; nothing applied)" if result.dry_run else result.generation
    elements = ", ".join(f"{name} {count}" for name, count in sorted(result.elements.items()))
    return [
        ("generation", generation),
        ("devices", result.devices),
        ("profiles", result.profiles),
        ("quarantined", result.quarantined),
        ("elements", elements or None),
        ("unprofiled", ", ".join(result.unprofiled) or "none"),
        *(("unresolved", f"{url}: {'; '.join(why)}") for url, why in sorted(result.unresolved.items())),
        ("sha256", result.digest),
        ("seconds", f"{result.seconds:.3f}"),
    ]


def _endpoint(address: str, port: int, protocol: int) -> str:
    if protocol not in _PORTED:
        return address
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _blocked_row(device: str, verdict: FlowVerdict) -> tuple[object, ...]:
    flow: Flow = verdict.flow
    protocol = _protocol(flow.protocol)
    if flow.icmp_type is not None:
        protocol += f" type {flow.icmp_type} code {flow.icmp_code or 0}"
    return (
        device, format_time(flow.start), protocol, _endpoint(flow.source, flow.source_port, flow.protocol),
        _endpoint(flow.destination, flow.destination_port, flow.protocol), verdict.verdict.value,
        verdict.reason,
    )  # fmt: skip


def _simulation_summary(simulation: Simulation, proposed: Sequence[MudProfile]) -> str:
    devices = sum(1 for report in simulation.devices.values() if report.blocked)
    using = f" with {len(proposed)} proposed profiles" if proposed else ""
    return (
        f"{simulation.flows} flows{using}: {simulation.blocked} blocked on {devices} of "
        f"{len(simulation.devices)} managed devices, {simulation.unmanaged} unmanaged"
    )
