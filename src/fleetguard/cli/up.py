"""``fleetguard up``: the API and the background services in one process, on the embedded defaults.

Start-up order: open the runtime (database migrated), publish any event-log entries that a previous
process committed but did not publish (the log is the outbox), load the checkpoint signing key (fail
closed on a bad one), bind the port (a taken port is a one-line error), then serve. SIGINT and
SIGTERM stop the server gracefully; the checkpointer then signs a last checkpoint, the runtime is
closed and the process exits 0. Beside the server, the renewal scheduler logs every minute which
certificates are due for renewal (:mod:`fleetguard.cli.renewal_scheduler`).
"""

import errno
import logging
import signal
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING, Annotated
from urllib.parse import urlsplit, urlunsplit

import typer
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from fleetguard.cli.checkpointer import Checkpointer
from fleetguard.cli.context import CliContext, cli_context
from fleetguard.cli.ota_scheduler import OtaScheduler
from fleetguard.cli.output import stdout_console
from fleetguard.cli.renewal_scheduler import DueWindow, RenewalScheduler
from fleetguard.enroll.endpoint import open_est_endpoint
from fleetguard.errors import InvalidInput, Unavailable
from fleetguard.gateway.endpoint import open_mqtt_endpoint
from fleetguard.installation import Runtime
from fleetguard.monitor.endpoint import BrokerFeed, ViolationWatcher, open_flow_collector, open_live_capture
from fleetguard.segment.endpoint import open_segment_endpoint

if TYPE_CHECKING:
    import uvicorn

__all__ = ["masked_url", "up_command"]

_GRACEFUL_SHUTDOWN_S = 10

Host = Annotated[
    str | None,
    typer.Option("--host", help="Address to listen on (default: FLEETGUARD_API_HOST, else 127.0.0.1)."),
]
Port = Annotated[
    int | None,
    typer.Option(
        "--port", min=0, max=65535, help="Port to listen on (default: FLEETGUARD_API_PORT, else 8470)."
    ),
]


def up_command(ctx: typer.Context, host: Host = None, port: Port = None) -> None:
    """Run the API and the background services in one process until Ctrl-C or SIGTERM.

    Uses the embedded defaults: SQLite in the data directory and the in-process event bus, unless
    --database-url or FLEETGUARD_BUS_URL say otherwise. Signs an event-log checkpoint every
    FLEETGUARD_CHECKPOINT_INTERVAL_S seconds while the log grows, and logs the certificates due for
    renewal every minute. Supervises a Mosquitto broker on FLEETGUARD_MQTT_PORT (8883; 0 disables)
    whose access the trust policies decide and re-decide on every change (quarantine, revocation,
    posture, risk, a new policy). With FLEETGUARD_SEGMENT_ENFORCE=true it applies the fleet's
    nftables ruleset, keeps MUD DNS names current, reports violations and quarantines at the
    firewall what the trust policies cut off. Serves the OTA repositories under /ota/ (and devices'
    check-ins on the EST port) and evaluates rollout campaigns every FLEETGUARD_OTA_EVALUATE_S.
    With FLEETGUARD_NETFLOW_PORT it collects NetFlow/IPFIX from FLEETGUARD_NETFLOW_EXPORTERS and
    raises alerts from the flows. Prints where the API, its documentation, EST and MQTT are. Fails
    (exit 1) if the API port is taken; EST and MQTT that cannot start are reported, not fatal.
    """
    context = cli_context(ctx)
    settings = context.settings
    _log_to_stderr(verbose=context.verbose)
    with context.runtime() as runtime:
        runtime.relay.pump()
        runtime.relay.start()
        checkpointer = Checkpointer(runtime.log, runtime.signer(), interval_s=settings.checkpoint_interval_s)
        renewals = RenewalScheduler(runtime.pki, DueWindow.from_settings(settings))
        ota = OtaScheduler(runtime.campaigns, runtime.ota, interval_s=settings.ota_evaluate_s)
        with _listen(host or settings.api_host, settings.api_port if port is None else port) as listener:
            server = _server(runtime, verbose=context.verbose)
            est = open_est_endpoint(runtime, host=settings.est_host or host or settings.api_host)
            segment = open_segment_endpoint(runtime)
            firewall = [segment.point] if segment.point is not None else []
            mqtt = open_mqtt_endpoint(
                runtime, host=settings.mqtt_host or host or settings.api_host, extra_points=firewall
            )
            if mqtt.evaluator is None:
                segment.evaluate_alone(runtime)
            flows = open_flow_collector(runtime)
            live = open_live_capture(runtime)
            violations = ViolationWatcher(runtime)
            broker_feed = None
            if mqtt.gateway is not None:  # the supervised broker's log feeds the monitor
                broker_feed = BrokerFeed(runtime)
                mqtt.gateway.broker.log_observers.append(broker_feed.line)
            _print_banner(
                context,
                listener,
                est_line=est.url or est.reason or "",
                mqtt_line=mqtt.url or mqtt.reason or "",
                segment_line=segment.summary,
                monitor_line=f"{flows.summary}; {live.summary}",
            )
            checkpointer.start()
            renewals.start()
            ota.start()
            try:
                with _stop_on_signals(server):
                    _serve(server, listener)
            finally:
                violations.stop()
                live.stop()
                if broker_feed is not None:
                    broker_feed.stop()
                flows.stop()
                mqtt.stop()
                segment.stop()
                est.stop()
                ota.stop()
                renewals.stop()
                checkpointer.stop()


def _server(runtime: Runtime, *, verbose: bool) -> "uvicorn.Server":
    import uvicorn

    try:
        from fleetguard.api.app import create_app
    except ModuleNotFoundError as exc:
        if exc.name is None or not exc.name.startswith("fleetguard.api"):
            raise
        raise Unavailable("this build has no HTTP API (fleetguard.api.app is missing)") from exc
    config = uvicorn.Config(
        create_app(runtime),
        log_level="info" if verbose else "warning",
        access_log=verbose,
        server_header=False,
        timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_S,
    )
    return uvicorn.Server(config)


def _serve(server: "uvicorn.Server", listener: socket.socket) -> None:
    try:
        server.run(sockets=[listener])
    except SystemExit as exc:  # uvicorn exits the process when the application fails to start
        raise Unavailable("the API failed to start", hint="run again with -v and read the log above") from exc


def _log_to_stderr(*, verbose: bool) -> None:
    # The background services (checkpoints, renewals, relay) report through the "fleetguard" logger.
    logger = logging.getLogger("fleetguard")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)


@contextmanager
def _listen(host: str, port: int) -> Iterator[socket.socket]:
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        listener = socket.create_server((host, port), family=family)
    except socket.gaierror as exc:
        raise InvalidInput(f"cannot resolve --host {host!r}: {exc.strerror}") from exc
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise Unavailable(
                f"port {port} on {host} is already in use", hint="stop the other server or pass --port"
            ) from exc
        raise InvalidInput(f"cannot listen on {host} port {port}: {exc.strerror}") from exc
    # socket.create_server leaves proto 0, so asyncio does not switch Nagle off on accepted
    # connections; Linux copies TCP_NODELAY from the listener. Without it a keep-alive response
    # split in two writes waits for the client's delayed ACK (40 ms per request).
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with listener:
        yield listener


@contextmanager
def _stop_on_signals(server: "uvicorn.Server") -> Iterator[None]:
    """Make SIGINT and SIGTERM ask ``server`` to stop, before it starts and after it re-raises them.

    uvicorn installs its own handlers while it runs and, once stopped, re-raises the signals it
    caught for the handlers it found; these handlers make that a request to stop, not a crash.
    """

    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        server.should_exit = True

    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, request_stop) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _print_banner(
    context: CliContext,
    listener: socket.socket,
    *,
    est_line: str,
    mqtt_line: str,
    segment_line: str,
    monitor_line: str = "",
) -> None:
    host, port = listener.getsockname()[:2]
    base = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    settings = context.settings
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    for name, value in (
        ("API", f"{base}/v1"),
        ("API docs", f"{base}/docs  (OpenAPI: {base}/openapi.json)"),
        ("metrics", f"{base}/metrics"),
        ("health", f"{base}/healthz"),
        ("EST enrollment", est_line),
        ("MQTT broker", mqtt_line),
        ("segmentation", segment_line),
        ("monitoring", monitor_line),
        ("data dir", str(settings.data_dir.resolve())),
        ("database", masked_url(settings.resolved_database_url)),
        ("event bus", masked_url(settings.bus_url)),
        (
            "API token",
            "the admin token `fleetguard init` printed, or: fleetguard tokens create NAME --role operator",
        ),
    ):
        grid.add_row(Text(name), Text(value))
    console = stdout_console()
    console.print(Panel(grid, title="fleetguard is running", subtitle="Ctrl-C to stop", expand=False))
    sys.stdout.flush()


def masked_url(url: str) -> str:
    """Return ``url`` with its password, if any, replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostinfo}"))
