"""``fleetguard ota``: keys, init, hardware, publish (behind the firmware gate), staged signatures and
``sign``, rotation, campaigns from draft to abort, compliance and tick, driven through the command line
against a real installation; errors are one line and exit 1, and change nothing.

Images are tiny squashfs filesystems built with ``mksquashfs``: ``v1`` and ``v2`` are clean (the gate
lets them through once scanned), ``gate`` has a default root password and telnet enabled.
"""

from __future__ import annotations

import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
from typer.testing import Result

from firmware_images import small_squashfs
from fleetguard.ota.keys import generate_key_file, public_key_pem

from .conftest import Cli, one_line

pytestmark = pytest.mark.skipif(shutil.which("mksquashfs") is None, reason="needs mksquashfs")

Json = dict[str, Any]
ROOT_DEFAULT = b"root:$1$abcdefgh$/ehdsgh6T85pypwniuldr1:19000:0:99999:7:::\n"  # xc3511 (Mirai)
DEVICES = ("cam-1", "cam-2", "cam-3", "cam-4")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("ota-cli")
    hostname = {"/etc/hostname": b"cam\n", "/etc/motd": b"hello " * 200}
    return {
        "v1": small_squashfs(base / "v1.sqfs", hostname),
        "v2": small_squashfs(base / "v2.sqfs", {**hostname, "/etc/version": b"2.0\n"}),
        "gate": small_squashfs(
            base / "gate.sqfs",
            {
                "/etc/shadow": ROOT_DEFAULT,
                "/etc/inetd.conf": b"telnet stream tcp nowait root /usr/sbin/telnetd telnetd\n",
            },
        ),
    }


class Keys:
    """Offline key files: ``NAME.pem`` (private) and ``NAME.pub`` (public)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        base.mkdir(exist_ok=True)

    def private(self, name: str) -> str:
        path = self.base / f"{name}.pem"
        if not path.exists():
            key = generate_key_file(path)
            (self.base / f"{name}.pub").write_text(public_key_pem(key))
        return str(path)

    def public(self, name: str) -> str:
        self.private(name)
        return str(self.base / f"{name}.pub")


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path / "keys")


@pytest.fixture
def ota(cli: Cli, initialized: None, keys: Keys) -> Cli:
    """OTA initialized; hardware ``cam`` with release keys r1, r2 (2 of 2); four active cam devices."""
    cli.ok("ota", "init", "--root-key", keys.public("root"), "--targets-key", keys.public("targets"),
           "--director-root-key", keys.public("director"), "--key", keys.private("root"),
           "--key", keys.private("targets"), "--key", keys.private("director"))  # fmt: skip
    cli.ok("ota", "hardware", "add", "cam", "--release-key", keys.public("r1"), "--release-key",
           keys.public("r2"), "--threshold", "2", "--key", keys.private("targets"))  # fmt: skip
    for device in DEVICES:
        cli.ok("devices", "add", "--id", device, "--serial", device, "--manufacturer", "Acme",
               "--model", "cam", "--firmware", "1.0")  # fmt: skip
        cli.ok("devices", "provision", device)
        cli.ok("devices", "activate", device)
    return cli


def _object(cli: Cli, *args: str) -> Json:
    value = cli.json(*args)
    assert isinstance(value, dict)
    return value


def _list(cli: Cli, *args: str) -> list[Json]:
    value = cli.json(*args)
    assert isinstance(value, list)
    return value


def _failed(result: Result) -> str:
    assert result.exit_code == 1, result.output
    return one_line(result.stderr)


def _publish(cli: Cli, keys: Keys, image: Path, release: str, counter: int, *signers: str) -> list[Json]:
    args = [arg for name in signers for arg in ("--key", keys.private(name))]
    return _list(cli, "ota", "release", "publish", str(image), "--hardware", "cam", "--release", release,
                 "--counter", str(counter), "--scan", *args)  # fmt: skip


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- keys and init -------------------------------------------------------------------------------


def test_keys_generate_writes_a_private_key_and_its_public_key(cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "root.pem"
    result = cli.ok("ota", "keys", "generate", str(out))

    assert (_mode(out), _mode(tmp_path / "root.pem.pub")) == (0o600, 0o644)
    public = (tmp_path / "root.pem.pub").read_text()
    assert public.startswith("-----BEGIN PUBLIC KEY-----")
    assert public.strip() in result.stdout
    assert "NOT encrypted" in result.stdout
    assert "keyid" in result.stdout


def test_keys_generate_encrypts_with_a_passphrase_and_never_overwrites(cli: Cli, tmp_path: Path) -> None:
    passphrase = tmp_path / "pass.txt"
    passphrase.write_text("correct horse\n")
    out = tmp_path / "r1.pem"
    created = _object(cli, "ota", "keys", "generate", str(out), "--passphrase-file", str(passphrase))

    assert created["encrypted"] is True
    assert len(created["keyid"]) == 64
    assert b"ENCRYPTED PRIVATE KEY" in out.read_bytes()
    before = out.read_bytes()
    assert "exists; refusing to overwrite a key" in _failed(cli("ota", "keys", "generate", str(out)))
    assert out.read_bytes() == before


def test_commands_before_init_say_to_run_ota_init(cli: Cli, initialized: None) -> None:
    assert _failed(cli("ota", "staged")) == (
        "error: the OTA repositories are not initialized (run: fleetguard ota init)"
    )


def test_init_defines_every_role_and_generates_private_online_keys(ota: Cli) -> None:
    keys_dir = ota.data_dir / "ota" / "keys"
    assert sorted(p.name for p in keys_dir.iterdir()) == [
        "director-snapshot.pem", "director-targets.pem", "director-timestamp.pem", "image-snapshot.pem",
        "image-timestamp.pem",
    ]  # fmt: skip
    assert {_mode(p) for p in keys_dir.iterdir()} == {0o600}
    assert (ota.data_dir / "ota" / "image" / "metadata" / "1.root.json").exists()
    assert _list(ota, "ota", "staged") == []


def test_init_twice_is_refused(ota: Cli, keys: Keys) -> None:
    result = ota("ota", "init", "--root-key", keys.public("root"), "--targets-key", keys.public("targets"),
                 "--director-root-key", keys.public("director"), "--key", keys.private("root"))  # fmt: skip
    assert "already holds OTA repositories" in _failed(result)


def test_init_refuses_a_signing_key_of_no_role_and_a_file_that_is_no_key(
    cli: Cli, initialized: None, keys: Keys, tmp_path: Path
) -> None:
    roles = ["--root-key", keys.public("root"), "--targets-key", keys.public("targets"),
             "--director-root-key", keys.public("director")]  # fmt: skip
    assert "is not a key of any role given" in _failed(cli("ota", "init", *roles, "--key", keys.private("x")))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key\n")
    assert "is not a readable private key" in _failed(cli("ota", "init", *roles, "--key", str(garbage)))
    assert not (cli.data_dir / "ota" / "image").exists()


def test_init_below_a_threshold_publishes_nothing(cli: Cli, initialized: None, keys: Keys) -> None:
    result = cli("ota", "init", "--root-key", keys.public("root"), "--root-key", keys.public("root2"),
                 "--root-threshold", "2", "--targets-key", keys.public("targets"), "--director-root-key",
                 keys.public("director"), "--key", keys.private("root"), "--key", keys.private("targets"),
                 "--key", keys.private("director"))  # fmt: skip
    assert "root is not signed by a threshold of its keys" in _failed(result)
    assert not (cli.data_dir / "ota" / "image" / "metadata" / "1.root.json").exists()


def test_encrypted_signing_key_needs_its_passphrase_file(
    cli: Cli, initialized: None, keys: Keys, tmp_path: Path
) -> None:
    passphrase = tmp_path / "pass.txt"
    passphrase.write_text("s3cret\n")
    root = tmp_path / "root-enc.pem"
    cli.ok("ota", "keys", "generate", str(root), "--passphrase-file", str(passphrase))
    args = ["ota", "init", "--root-key", f"{root}.pub", "--targets-key", keys.public("targets"),
            "--director-root-key", keys.public("director"), "--key", str(root),
            "--key", keys.private("targets"), "--key", keys.private("director")]  # fmt: skip

    assert _failed(cli(*args)) == f"error: {root} is encrypted (pass --passphrase-file)"
    cli.ok(*args, "--passphrase-file", str(passphrase))


# --- releases ------------------------------------------------------------------------------------


def test_publish_with_the_release_keys_threshold_publishes_and_serves_the_image(
    ota: Cli, keys: Keys, images: dict[str, Path]
) -> None:
    (first,) = _publish(ota, keys, images["v1"], "1.0", 1, "r1", "r2")
    (second,) = _publish(ota, keys, images["v2"], "2.0", 2, "r1", "r2")

    assert (first["state"], first["release_counter"], first["hardware_id"]) == ("published", 1, "cam")
    assert second["state"] == "published"
    for delta in second["deltas"]:
        assert delta["path"].startswith("cam/deltas/")
        assert delta["from_sha256"] == first["sha256"]
    served = ota.data_dir / "ota" / "image" / "targets" / "cam" / "2.0" / f"{second['sha256']}.v2.sqfs"
    assert served.read_bytes() == images["v2"].read_bytes()
    listed = _list(ota, "ota", "releases", "--hardware", "cam")
    assert [(r["release"], r["state"]) for r in listed] == [("2.0", "published"), ("1.0", "published")]
    assert _list(ota, "ota", "releases", "--hardware", "other") == []
    table = ota.ok("ota", "releases").stdout
    assert "2.0" in table
    assert "published" in table


def test_gate_refusal_exits_1_with_the_gates_message_and_publishes_nothing(
    ota: Cli, keys: Keys, images: dict[str, Path]
) -> None:
    result = ota("ota", "release", "publish", str(images["gate"]), "--hardware", "cam", "--release", "6.6",
                 "--counter", "6", "--scan", "--key", keys.private("r1"),
                 "--key", keys.private("r2"))  # fmt: skip

    line = _failed(result)
    assert line.startswith("error: release of ")
    assert "refused" in line
    assert "fleetguard firmware waive" in line
    assert _list(ota, "ota", "releases") == []
    assert not (ota.data_dir / "ota" / "image" / "targets" / "cam").exists()


def test_publish_refuses_a_key_that_is_not_a_release_key(
    ota: Cli, keys: Keys, images: dict[str, Path]
) -> None:
    result = ota("ota", "release", "publish", str(images["v1"]), "--hardware", "cam", "--release", "1.0",
                 "--counter", "1", "--key", keys.private("targets"))  # fmt: skip

    assert "is not a release key of cam" in _failed(result)
    assert _list(ota, "ota", "releases") == []


def test_publish_refuses_a_counter_that_does_not_increase(
    ota: Cli, keys: Keys, images: dict[str, Path]
) -> None:
    _publish(ota, keys, images["v1"], "1.0", 5, "r1", "r2")
    result = ota("ota", "release", "publish", str(images["v2"]), "--hardware", "cam", "--release", "2.0",
                 "--counter", "5", "--key", keys.private("r1"), "--key", keys.private("r2"))  # fmt: skip

    assert "release counter 5 must be above 5" in _failed(result)
    assert [r["release"] for r in _list(ota, "ota", "releases")] == ["1.0"]


# --- staged signatures, then a campaign from draft to abort --------------------------------------


def test_below_threshold_is_staged_and_ota_sign_publishes_and_approves_the_campaign(
    ota: Cli, keys: Keys, images: dict[str, Path]
) -> None:
    _publish(ota, keys, images["v1"], "1.0", 1, "r1", "r2")
    (staged_release,) = _publish(ota, keys, images["v2"], "2.0", 2, "r1")
    assert staged_release["state"] == "staged"
    assert _list(ota, "ota", "staged") == [
        {"repository": "image", "role": "hw-cam", "version": 2, "signatures": 1, "threshold": 2}
    ]
    refused = ota("ota", "campaign", "create", "--hardware", "cam", "--release", "2.0")
    assert "is staged, not published" in _failed(refused)

    signed = _object(ota, "ota", "sign", "hw-cam", "--key", keys.private("r2"))
    assert signed["published"] is True
    assert [r["release"] for r in signed["releases_published"]] == ["2.0"]
    assert _list(ota, "ota", "staged") == []

    created = _object(ota, "ota", "campaign", "create", "--hardware", "cam", "--release", "2.0", "--id", "c1",
                      "--wave", "canary:25", "--wave", "broad:100", "--soak", "1h", "--deadline", "2d",
                      "--window", "daily 00:00-24:00 UTC")  # fmt: skip
    assert (created["state"], created["devices"], created["scope_ppm"]) == ("draft", 4, 0)
    assert [(w["name"], w["total"], w["open"]) for w in created["waves"]] == [
        ("canary", 1, False), ("broad", 3, False)
    ]  # fmt: skip

    half = _object(ota, "ota", "campaign", "approve", "c1", "--key", keys.private("r1"))
    assert half["state"] == "draft"
    assert "1 of 2 signatures" in half["reason"]
    assert _list(ota, "ota", "staged") == [
        {"repository": "image", "role": "hw-cam", "version": 3, "signatures": 1, "threshold": 2}
    ]
    assert "only a draft" not in ota.ok("ota", "campaign", "show", "c1").stdout

    completed = _object(ota, "ota", "sign", "hw-cam", "--key", keys.private("r2"))
    assert completed["campaigns_approved"] == ["c1"]
    approved = _object(ota, "ota", "campaign", "show", "c1")
    assert approved["state"] == "approved"
    assert approved["scope_ppm"] > 0


@pytest.fixture
def approved(ota: Cli, keys: Keys, images: dict[str, Path]) -> Cli:
    _publish(ota, keys, images["v1"], "1.0", 1, "r1", "r2")
    _publish(ota, keys, images["v2"], "2.0", 2, "r1", "r2")
    ota.ok("ota", "campaign", "create", "--hardware", "cam", "--release", "2.0", "--id", "c1")
    ota.ok("ota", "campaign", "approve", "c1", "--key", keys.private("r1"), "--key", keys.private("r2"))
    return ota


def test_campaign_start_pause_resume_abort_and_illegal_transitions(approved: Cli) -> None:
    cli = approved
    assert _object(cli, "ota", "campaign", "start", "c1")["state"] == "running"
    paused = _object(cli, "ota", "campaign", "pause", "c1", "--reason", "looking at canary logs")
    assert (paused["state"], paused["reason"]) == ("paused", "looking at canary logs")

    line = _failed(cli("ota", "campaign", "start", "c1"))
    assert (
        line == "error: campaign cannot go from paused to running (start) (from paused it may: resume, abort)"
    )
    assert _object(cli, "ota", "campaign", "show", "c1")["state"] == "paused"

    assert _object(cli, "ota", "campaign", "resume", "c1")["state"] == "running"
    ticked = _object(cli, "ota", "tick")
    assert [(c["campaign"], c["decision"], c["state"]) for c in ticked["campaigns"]] == [
        ("c1", "proceed", "running")
    ]
    assert _object(cli, "ota", "campaign", "abort", "c1", "--reason", "bad build")["state"] == "aborted"
    assert "from aborted it may: nothing (it is final)" in _failed(cli("ota", "campaign", "resume", "c1"))
    (listed,) = _list(cli, "ota", "campaign", "list")
    assert (listed["id"], listed["state"], listed["reason"]) == ("c1", "aborted", "bad build")


def test_campaign_devices_lists_each_device_in_wave_order(approved: Cli) -> None:
    devices = _list(approved, "ota", "campaign", "devices", "c1")
    assert sorted(d["device_id"] for d in devices) == list(DEVICES)
    assert {d["step"] for d in devices} == {"pending"}
    assert [d["wave"] for d in devices] == sorted(d["wave"] for d in devices)
    assert _list(approved, "ota", "campaign", "devices", "c1", "--step", "committed") == []
    assert len(_list(approved, "ota", "campaign", "devices", "c1", "--limit", "2")) == 2
    assert "cam-1" in approved.ok("ota", "campaign", "devices", "c1").stdout


def test_campaign_show_prints_scope_and_waves(approved: Cli) -> None:
    shown = approved.ok("ota", "campaign", "show", "c1").stdout
    for text in ("approved", "signed scope", "canary", "early", "broad", "2.0 for cam"):
        assert text in shown


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--wave", "canary"), "--wave 'canary' is not NAME:PERCENT"),
        (("--wave", "canary:0"), "--wave 'canary:0' is not NAME:PERCENT"),
        (("--wave", "a:50", "--wave", "b:40"), "wave sizes are cumulative and must increase strictly"),
        (("--wave", "a:50"), "the last wave must reach 1000000 ppm"),
        (("--soak", "soon"), "--soak 'soon' is not a duration"),
        (("--window", "weekends"), "window 'weekends' is not like 'Mon-Fri 01:00-05:00 UTC'"),
        (("--starts", "2030-01-01"), "--starts '2030-01-01' is not an ISO 8601 time with offset"),
        (("--id", "bad id"), "campaign id 'bad id' must be letters"),
    ],
)
def test_campaign_create_refuses_invalid_options_and_stores_nothing(
    approved: Cli, args: tuple[str, ...], message: str
) -> None:
    line = _failed(approved("ota", "campaign", "create", "--hardware", "cam", "--release", "2.0", *args))
    assert message in line
    assert [c["id"] for c in _list(approved, "ota", "campaign", "list")] == ["c1"]


def test_unknown_campaign_and_release_are_one_line_errors(ota: Cli) -> None:
    assert _failed(ota("ota", "campaign", "show", "nope")) == "error: no campaign 'nope'"
    assert "no release '9.9' for hardware 'cam'" in _failed(
        ota("ota", "campaign", "create", "--hardware", "cam", "--release", "9.9")
    )


# --- compliance ----------------------------------------------------------------------------------


def test_compliance_counts_devices_behind_and_lists_them(approved: Cli) -> None:
    report = _object(approved, "ota", "compliance", "--devices")
    assert report["counts"] == {"current": 0, "behind": 4, "unknown": 0}
    assert {(d["device_id"], d["release"], d["behind"], d["latest"]) for d in report["devices"]} == {
        (device, "1.0", 1, "2.0") for device in DEVICES
    }
    lags = {r["release"]: r for r in report["releases"]}
    assert (lags["1.0"]["running"], lags["2.0"]["running"], lags["2.0"]["waiting"]) == (4, 0, 4)
    assert _object(approved, "ota", "compliance")["devices"] is None
    text = approved.ok("ota", "compliance", "--devices").stdout
    assert "behind" in text
    assert "cam-4" in text


# --- rotation and discard -------------------------------------------------------------------------


def test_rotate_root_needs_old_and_new_thresholds(ota: Cli, keys: Keys) -> None:
    staged = ota.ok(
        "ota", "rotate", "root", "--new-key", keys.public("root2"), "--key", keys.private("root2")
    )
    assert "staged with 1 of 1 signatures" in staged.stdout
    assert not (ota.data_dir / "ota" / "image" / "metadata" / "2.root.json").exists()
    signed = ota.ok("ota", "sign", "root", "--key", keys.private("root"))
    assert "root version 2 published" in signed.stdout
    assert (ota.data_dir / "ota" / "image" / "metadata" / "2.root.json").exists()
    # The old root key no longer signs a root.
    result = ota("ota", "rotate", "root", "--new-key", keys.public("root3"), "--key", keys.private("root"))
    assert "is not a key of role root" in _failed(result)


def test_rotate_director_root(ota: Cli, keys: Keys) -> None:
    result = ota.ok("ota", "rotate", "root", "--repository", "director", "--new-key", keys.public("dir2"),
                    "--key", keys.private("director"), "--key", keys.private("dir2"))  # fmt: skip
    assert "root version 2 published" in result.stdout
    assert (ota.data_dir / "ota" / "director" / "metadata" / "2.root.json").exists()


def test_rotate_targets_and_a_hardware_role_with_releases(
    ota: Cli, keys: Keys, images: dict[str, Path]
) -> None:
    _publish(ota, keys, images["v1"], "1.0", 1, "r1", "r2")
    targets = ota.ok(
        "ota", "rotate", "targets", "--new-key", keys.public("t2"), "--key", keys.private("root"),
        "--key", keys.private("t2"),
    )  # fmt: skip
    assert "image targets trusts 1 of 1 new keys: root version 2 published" in targets.stdout
    assert "targets re-signed with its new keys: targets version 3 published" in targets.stdout
    hardware = ota.ok(
        "ota", "rotate", "hw-cam", "--new-key", keys.public("r3"), "--key", keys.private("t2"),
        "--key", keys.private("r3"),
    )  # fmt: skip
    assert "hw-cam re-signed with its new keys" in hardware.stdout
    assert _list(ota, "ota", "staged") == []
    (release,) = _publish(ota, keys, images["v2"], "2.0", 2, "r3")  # the new key alone publishes now
    assert release["state"] == "published"
    refused = ota("ota", "release", "publish", str(images["v1"]), "--hardware", "cam", "--release", "3.0",
                  "--counter", "3", "--scan", "--key", keys.private("r1"))  # fmt: skip
    assert "is not a release key of cam" in _failed(refused)  # the old key signs nothing now


def test_rotate_targets_without_the_new_keys_asks_for_resign(ota: Cli, keys: Keys) -> None:
    rotated = ota.ok(
        "ota", "rotate", "targets", "--new-key", keys.public("t2"), "--key", keys.private("root")
    )
    assert "fleetguard ota resign targets" in rotated.stdout
    assert (
        "targets version 3 published"
        in ota.ok("ota", "resign", "targets", "--key", keys.private("t2")).stdout
    )


def test_rotate_an_online_key(ota: Cli, keys: Keys) -> None:
    before = (ota.data_dir / "ota" / "keys" / "image-timestamp.pem").read_bytes()
    rotated = ota.ok("ota", "rotate", "timestamp", "--key", keys.private("root"))
    assert "image-timestamp rotated" in rotated.stdout
    assert (ota.data_dir / "ota" / "keys" / "image-timestamp.pem").read_bytes() != before
    director = ota.ok(
        "ota", "rotate", "targets", "--repository", "director", "--key", keys.private("director")
    )
    assert "director-targets rotated" in director.stdout


def test_rotate_a_hardware_role_before_its_first_release(
    ota: Cli, keys: Keys, images: dict[str, Path]
) -> None:
    ota.ok("ota", "rotate", "hw-cam", "--new-key", keys.public("r3"), "--key", keys.private("targets"))
    (release,) = _publish(ota, keys, images["v1"], "1.0", 1, "r3")
    assert release["state"] == "published"


def test_discard_drops_what_is_staged(ota: Cli, keys: Keys, images: dict[str, Path]) -> None:
    _publish(ota, keys, images["v1"], "1.0", 1, "r1")
    assert len(_list(ota, "ota", "staged")) == 1
    discarded = ota.ok("ota", "discard", "hw-cam")
    assert "release 1.0 of cam was never published; forgotten" in discarded.stdout
    assert _list(ota, "ota", "staged") == []
    assert "nothing is staged for hw-cam" in _failed(
        ota("ota", "sign", "hw-cam", "--key", keys.private("r2"))
    )
    (again,) = _publish(ota, keys, images["v1"], "1.0", 1, "r1", "r2")  # the name and counter are free
    assert again["state"] == "published"


# --- help ----------------------------------------------------------------------------------------


def test_help_explains_the_key_model_and_rotation(cli: Cli) -> None:
    text = " ".join(cli.ok("ota", "--help").stdout.split())
    for phrase in (
        "Offline keys",
        "ota keys generate",
        "--key FILE",
        "--passphrase-file",
        "ota sign",
        "Online",
    ):
        assert phrase in text
    rotate = " ".join(cli.ok("ota", "rotate", "--help").stdout.split())
    assert "for every role of both repositories" in rotate
    assert "online keys" in rotate
