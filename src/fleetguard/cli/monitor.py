"""``fleetguard monitor``: alerts and their triage, evaluation of the detectors on labelled traffic."""

from __future__ import annotations

import enum
import time
from pathlib import Path
from typing import Annotated

import typer

from fleetguard.cli.context import cli_context, operator_actor
from fleetguard.cli.exit_status import EXIT_STATUS_EPILOG
from fleetguard.cli.output import JsonFlag, format_time, print_fields, print_json, print_records
from fleetguard.monitor.alerts import Alert, AlertState

__all__ = ["app"]

app = typer.Typer(
    name="monitor",
    help="Passive threat monitoring: alerts with their evidence and triage (new, acknowledged, resolved, "
    "false positive), and the detectors' evaluation on labelled captures.",
    no_args_is_help=True,
    epilog=EXIT_STATUS_EPILOG,
)
alerts_app = typer.Typer(name="alerts", help="Alerts: list, show, triage.", no_args_is_help=True)
app.add_typer(alerts_app)

AlertId = Annotated[str, typer.Argument(metavar="ALERT_ID", help="An alert id (from `monitor alerts list`).")]


@alerts_app.command("list")
def list_alerts(
    ctx: typer.Context,
    state: Annotated[AlertState | None, typer.Option("--state", help="Only alerts in this state.")] = None,
    device: Annotated[str | None, typer.Option("--device", help="Only alerts about this device.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000, help="At most this many.")] = 100,
    as_json: JsonFlag = False,
) -> None:
    """List alerts, most recent first: severity, rule, device or address, count, why."""
    with cli_context(ctx).runtime() as runtime:
        alerts = runtime.alerts.alerts(state=state, device_id=device, limit=limit)
    print_records(
        [_record(alert) for alert in alerts],
        [
            ("id", "ID"),
            ("severity", "SEVERITY"),
            ("state", "STATE"),
            ("rule", "RULE"),
            ("subject", "DEVICE"),
            ("count", "COUNT"),
            ("last_seen", "LAST SEEN"),
            ("reason", "WHY"),
        ],
        as_json=as_json,
        empty="no alerts",
    )


@alerts_app.command("show")
def show_alert(ctx: typer.Context, alert_id: AlertId, as_json: JsonFlag = False) -> None:
    """Show one alert with its evidence (the flows, features or rule that fired, how far from baseline)."""
    with cli_context(ctx).runtime() as runtime:
        found = [a for a in runtime.alerts.alerts(limit=10_000) if a.id == alert_id]
    if not found:
        from fleetguard.errors import NotFound

        raise NotFound(f"no alert {alert_id[:64]!r}", hint="fleetguard monitor alerts list")
    record = _record(found[0]) | {"evidence": dict(found[0].evidence)}
    if as_json:
        print_json(record)
        return
    print_fields([(key, value) for key, value in record.items()])


@alerts_app.command("triage")
def triage(
    ctx: typer.Context,
    alert_id: AlertId,
    state: Annotated[
        AlertState, typer.Argument(metavar="STATE", help="acknowledged, resolved or false_positive.")
    ],
    note: Annotated[str, typer.Option("--note", help="Why (kept with the alert and in the event log).")] = "",
    as_json: JsonFlag = False,
) -> None:
    """Move an alert in triage; the device's risk score follows its open alerts."""
    with cli_context(ctx).runtime() as runtime:
        alert = runtime.alerts.triage(alert_id, state, actor=operator_actor(), note=note)
    if as_json:
        print_json(_record(alert))
        return
    typer.echo(f"alert {alert.id} is {alert.state}")


def _record(alert: Alert) -> dict[str, object]:
    return {
        "id": alert.id, "severity": str(alert.severity), "state": str(alert.state), "rule": alert.rule,
        "detector": alert.detector, "device_id": alert.device_id, "address": alert.address,
        "subject": alert.device_id or alert.address, "count": alert.count,
        "first_seen": format_time(alert.first_seen), "last_seen": format_time(alert.last_seen),
        "reason": alert.reason, "triaged_by": alert.triaged_by, "triage_note": alert.triage_note,
    }  # fmt: skip


class InputFormat(enum.StrEnum):
    """What an ingested file holds."""

    PCAP = "pcap"
    ZEEK = "zeek"
    MOSQUITTO = "mosquitto"


@app.command("ingest")
def ingest(
    ctx: typer.Context,
    path: Annotated[
        Path, typer.Argument(metavar="FILE", exists=True, dir_okay=False, help="The capture or log.")
    ],
    input_format: Annotated[
        InputFormat,
        typer.Option(
            "--format", help="pcap (pcap or pcapng), zeek (conn.log TSV/JSON/CSV) or mosquitto (log)."
        ),
    ] = InputFormat.PCAP,
    as_json: JsonFlag = False,
) -> None:
    """Run the detectors over a capture, a Zeek conn.log or a Mosquitto log; raise alerts about the
    devices involved.

    Malformed records are counted and skipped with a reason, never fatal; the summary says how many.
    """
    with cli_context(ctx).runtime() as runtime:
        if input_format is InputFormat.PCAP:
            from fleetguard.monitor.packets import read_packets

            packets, skipped = read_packets(path)
            report = runtime.monitor.ingest_packets(packets, skipped=skipped)
        elif input_format is InputFormat.ZEEK:
            from fleetguard.monitor.zeek import read_flows

            flows, skipped = read_flows(path)
            report = runtime.monitor.ingest_flows(flows, skipped=skipped)
        else:
            from fleetguard.monitor.broker import parse_mosquitto_log

            with open(path, encoding="utf-8", errors="replace") as lines:
                events, skipped = parse_mosquitto_log(lines)
            report = runtime.monitor.ingest_broker(events, skipped=skipped)
    summary = {
        "records": report.records, "findings": len(report.findings), "alerts": [a.id for a in report.alerts],
        "suppressed": report.suppressed, "skipped": dict(report.skipped.counts),
    }  # fmt: skip
    if as_json:
        print_json(summary)
        return
    typer.echo(
        f"{report.records} records: {len(report.findings)} findings, {len(report.alerts)} alerts raised, "
        f"{report.suppressed} suppressed, {report.skipped.total} skipped"
    )
    for finding in report.findings[:20]:
        typer.echo(f"  {finding.severity:8} {finding.rule:22} {finding.reason}")


_PRIVATE_NETWORKS = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7", "fe80::/10")


@app.command("discover")
def discover(
    ctx: typer.Context,
    path: Annotated[
        Path, typer.Argument(metavar="FILE", exists=True, dir_okay=False, help="The capture or log.")
    ],
    input_format: Annotated[InputFormat, typer.Option("--format", help="pcap or zeek.")] = InputFormat.PCAP,
    network: Annotated[
        list[str] | None,
        typer.Option("--network", metavar="CIDR", help="Local networks (default: the private ranges)."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Find addresses the fleet does not know in a capture or conn.log, fingerprint them (MAC OUI from
    Debian's ieee-data, DHCP, DNS, TLS SNI, port profile), and store them for an operator to adopt or
    reject."""
    import ipaddress

    from fleetguard.monitor.discovery import OuiTable, discover_devices

    networks = [ipaddress.ip_network(text, strict=False) for text in (network or _PRIVATE_NETWORKS)]
    with cli_context(ctx).runtime() as runtime:
        known = {str(b.ipv4) for b in runtime.segment.bindings() if b.ipv4} | {
            str(b.ipv6) for b in runtime.segment.bindings() if b.ipv6
        }
        known |= {row.address for row in runtime.monitor.discovered() if row.state != "discovered"}
        oui = OuiTable.load()
        if input_format is InputFormat.PCAP:
            from fleetguard.monitor.packets import read_packets

            packets, _ = read_packets(path)
            found = discover_devices(known=known, local_networks=networks, oui=oui, packets=[packets])
        else:
            from fleetguard.monitor.zeek import read_flows

            flows, _ = read_flows(path)
            found = discover_devices(known=known, local_networks=networks, oui=oui, flows=flows)
        new = runtime.monitor.record_discovered(found)
    records = [
        {
            "address": d.address, "mac": d.mac, "vendor": d.fingerprint.vendor,
            "guessed_type": str(d.fingerprint.guessed_type), "confidence": round(d.fingerprint.confidence, 2),
            "reasons": list(d.fingerprint.reasons),
        }
        for d in found.devices
    ]  # fmt: skip
    if as_json:
        print_json({"new": new, "devices": records, "oui": oui.reason or "loaded"})
        return
    typer.echo(f"{len(records)} unknown addresses ({new} new){'' if not oui.reason else f'; {oui.reason}'}")
    print_records(
        records,
        [
            ("address", "ADDRESS"),
            ("mac", "MAC"),
            ("vendor", "VENDOR"),
            ("guessed_type", "TYPE"),
            ("confidence", "CONFIDENCE"),
        ],
        as_json=False,
        empty="no unknown addresses",
    )


@app.command("discovered")
def discovered(
    ctx: typer.Context,
    state: Annotated[str | None, typer.Option("--state", help="discovered, adopted or rejected.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List discovered addresses and the operators' decisions."""
    from fleetguard.monitor.service import DiscoveryState

    with cli_context(ctx).runtime() as runtime:
        rows = runtime.monitor.discovered(DiscoveryState(state) if state else None)
    print_records(
        [
            {
                "address": r.address,
                "mac": r.mac,
                "vendor": r.vendor,
                "guessed_type": r.guessed_type,
                "confidence": r.confidence,
                "state": r.state,
                "last_seen": format_time(r.last_seen),
            }
            for r in rows
        ],
        [
            ("address", "ADDRESS"),
            ("state", "STATE"),
            ("vendor", "VENDOR"),
            ("guessed_type", "TYPE"),
            ("last_seen", "LAST SEEN"),
        ],
        as_json=as_json,
        empty="nothing discovered",
    )


@app.command("adopt")
def adopt(
    ctx: typer.Context,
    address: Annotated[str, typer.Argument(metavar="ADDRESS", help="A discovered address.")],
    device_id: Annotated[str, typer.Option("--id", help="The id of the new inventory device.")],
    manufacturer: Annotated[str | None, typer.Option(help="Default: the fingerprint's vendor.")] = None,
) -> None:
    """Adopt a discovered address: register it as a device (bound to the address for segmentation and
    monitoring)."""
    from fleetguard.inventory.model import DeviceSpec
    from fleetguard.monitor.service import DiscoveryState

    actor = operator_actor()
    with cli_context(ctx).runtime() as runtime:
        row = runtime.monitor.decide(address, DiscoveryState.ADOPTED, actor=actor)
        spec = DeviceSpec(
            id=device_id, serial=row.mac or address, manufacturer=manufacturer or row.vendor or "unknown",
            model=row.guessed_type or "",
        )  # fmt: skip
        runtime.inventory.register(spec, actor=actor, reason=f"adopted from discovery ({address})")
        v6 = ":" in address
        runtime.segment.bind(
            device_id, actor=actor, ipv4=None if v6 else address, ipv6=address if v6 else None
        )
    typer.echo(f"{address} adopted as device {device_id}")


@app.command("reject")
def reject(
    ctx: typer.Context,
    address: Annotated[str, typer.Argument(metavar="ADDRESS", help="A discovered address.")],
) -> None:
    """Reject a discovered address: it is not reported again."""
    from fleetguard.monitor.service import DiscoveryState

    with cli_context(ctx).runtime() as runtime:
        runtime.monitor.decide(address, DiscoveryState.REJECTED, actor=operator_actor())
    typer.echo(f"{address} rejected")


@app.command("eval")
def eval_command(  # noqa: PLR0917 - one parameter per option; typer passes them by keyword
    pcap: Annotated[
        Path | None, typer.Option("--pcap", exists=True, dir_okay=False, help="One capture, with --labels.")
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(
            "--labels",
            exists=True,
            dir_okay=False,
            help="Per-packet 0/1 lines, or a start,end,label CSV of time ranges.",
        ),
    ] = None,
    benign: Annotated[
        list[Path] | None, typer.Option("--benign", exists=True, dir_okay=False, help="Benign captures.")
    ] = None,
    attack: Annotated[
        list[Path] | None, typer.Option("--attack", exists=True, dir_okay=False, help="Attack captures.")
    ] = None,
    conn: Annotated[
        Path | None,
        typer.Option(
            "--conn", exists=True, dir_okay=False, help="A labelled Zeek conn.log (rules evaluated)."
        ),
    ] = None,
    train_fraction: Annotated[
        float, typer.Option("--train", min=0.05, max=0.95, help="Share used to train.")
    ] = 0.5,
    as_json: JsonFlag = False,
) -> None:
    """Evaluate the detectors on labelled traffic: ROC AUC, TPR at 0.1 % and 1 % FPR, packets/s.

    Packets: --pcap FILE --labels FILE, or --benign A.pcap ... --attack B.pcap ... (joined in time
    order, benign first). The autoencoder ensemble trains on the benign start (--train of the stream,
    never past the first attack packet) and scores the rest. Zeek: --conn FILE (IoT-23 labels) scores
    each flow by the rule detectors' findings about its source.
    """
    from fleetguard.monitor.dataset import Labelled, label_packets, labelled_captures
    from fleetguard.monitor.evaluation import format_report, to_json
    from fleetguard.monitor.packets import read_packets
    from fleetguard.monitor.pipeline import evaluate_packets

    if conn is not None:
        _eval_conn(conn, as_json=as_json)
        return
    started = time.perf_counter()
    if pcap is not None and labels is not None:
        packets, skipped = read_packets(pcap)
        stream = Labelled(packets, label_packets(packets, labels), skipped)
    elif benign and attack:
        stream = labelled_captures(benign, attack, read_packets)
    else:
        raise typer.BadParameter("give --pcap with --labels, --benign with --attack, or --conn")
    run = evaluate_packets(stream, read_s=time.perf_counter() - started, train_fraction=train_fraction)
    if as_json:
        typer.echo(to_json({"fleetguard-kitnet": run.evaluation}))
        return
    stages = run.stages
    typer.echo(
        f"{stages.packets} packets ({stream.skipped.total} skipped), trained on {stages.trained}, "
        f"scored {stages.scored}; read {stages.read_s:.2f} s, features {stages.features_s:.2f} s, "
        f"training {stages.train_s:.2f} s, scoring {stages.score_s:.2f} s"
    )
    typer.echo(format_report({"fleetguard-kitnet": run.evaluation}))


def _eval_conn(path: Path, *, as_json: bool) -> None:
    """Score each labelled flow 1 when a rule finding names its source in its time, else 0."""
    import numpy as np

    from fleetguard.monitor.evaluation import evaluate, format_report, to_json
    from fleetguard.monitor.rules import (
        BeaconDetector,
        BruteForceDetector,
        HostSweepDetector,
        PortScanDetector,
    )
    from fleetguard.monitor.zeek import read_flows

    flows, _ = read_flows(path)
    flows.sort(key=lambda flow: flow.start)
    labelled = [f for f in flows if f.label is not None]
    started = time.perf_counter()
    findings = [
        finding
        for detector in (PortScanDetector(), HostSweepDetector(), BruteForceDetector(), BeaconDetector())
        for finding in detector.observe(labelled)
    ]
    flagged = {(f.device, int(f.first.timestamp()) // 60) for f in findings}
    scores = np.array([float((f.src, int(f.start) // 60) in flagged) for f in labelled])
    truth = np.array([0 if f.label == "benign" else 1 for f in labelled], np.uint8)
    result = evaluate(scores, truth, seconds=max(1e-9, time.perf_counter() - started))
    typer.echo(to_json({"rules": result}) if as_json else format_report({"rules": result}))


@app.command("train")
def train(
    ctx: typer.Context,
    captures: Annotated[
        list[Path], typer.Argument(metavar="PCAP...", exists=True, dir_okay=False, help="Benign captures.")
    ],
) -> None:
    """Learn the anomaly model (features + autoencoder ensemble) from benign captures, joined in time
    order, and keep it: `monitor ingest` then raises explained `anomaly.autoencoder` alerts."""
    from fleetguard.monitor.dataset import concatenate
    from fleetguard.monitor.packets import read_packets

    packets = concatenate([read_packets(path)[0] for path in captures])
    with cli_context(ctx).runtime() as runtime:
        model = runtime.monitor.train(packets, actor=operator_actor())
    typer.echo(
        f"trained on {len(packets)} packets: {len(model.detector.groups)} feature groups, "
        f"threshold {model.detector.threshold:.4g}"
    )
