"""A firmware root filesystem with one planted finding of every kind, and decoys that must stay quiet.

Built at test time (``build_planted_rootfs``) with Python, ``gcc`` and ``openssl``; the tests then
pack it with Debian's tools (mksquashfs, cpio, mke2fs, mkfs.jffs2, mkimage) and scan every image.
``PLANTED`` lists the (rule, path) pairs a scan must report; ``DECOYS`` the pairs it must not.
Importable from every test (``tests/`` is on ``sys.path`` through ``tests/conftest.py``).
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.x509.oid import NameOID

__all__ = ["DECOYS", "PLANTED", "build_planted_rootfs"]

PLANTED: frozenset[tuple[str, str]] = frozenset({
    ("key.rsa-private", "/etc/ssl/private/server.key"),
    ("key.ed25519-private", "/root/.ssh/id_ed25519"),
    ("cert.expired", "/etc/ssl/certs/device.pem"),
    ("cert.weak-key", "/etc/ssl/certs/device.pem"),
    ("passwd.default-credential", "/etc/shadow"),
    ("passwd.empty-password", "/etc/shadow"),
    ("ppp.secret", "/etc/ppp/chap-secrets"),
    ("snmp.default-community", "/etc/snmp/snmpd.conf"),
    ("wifi.psk", "/etc/wpa_supplicant.conf"),
    ("secret.aws-access-key-id", "/usr/bin/cloud-sync.sh"),
    ("service.telnet", "/etc/inetd.conf"),
    ("service.upnp-insecure", "/etc/miniupnpd.conf"),
    ("service.ssh-root-password", "/etc/ssh/sshd_config"),
    ("perm.setuid", "/opt/bin/helper"),
    ("perm.world-writable-file", "/etc/rc.local"),
    ("elf.executable-stack", "/opt/bin/legacy"),
    ("elf.no-stack-canary", "/opt/bin/legacy"),
})  # fmt: skip
"""(rule, path) pairs every scan of the planted root filesystem must report."""

KNOWN_EXPLOITED = "CVE-2014-0160"  # Heartbleed, in the planted OpenSSL 1.0.1f

DECOYS: frozenset[tuple[str, str]] = frozenset({
    ("key.rsa-private", "/usr/lib/libstrings.so"),  # a bare PEM marker in a string table
    ("key.unparsed", "/usr/lib/libstrings.so"),
    ("service.ftp", "/etc/inetd.conf"),  # commented out
    ("wifi.psk", "/etc/wpa_supplicant.conf.example"),  # a placeholder
    ("perm.world-writable-dir", "/tmp"),  # noqa: S108 - sticky, inside the image
    ("perm.setuid", "/bin/hardened"),
    ("elf.executable-stack", "/bin/hardened"),
    ("elf.no-stack-canary", "/bin/hardened"),
})  # fmt: skip
"""(rule, path) pairs no scan may report."""

_NOW = dt.datetime.now(dt.UTC)
_CLEAR = serialization.NoEncryption()
_NOISE = 64


def build_planted_rootfs(root: Path) -> Path:
    """Write the planted root filesystem under ``root`` (as root: owners are 0) and return it."""
    folders = (
        "bin",
        "opt/bin",
        "usr/bin",
        "usr/lib",
        "etc/ssl/private",
        "etc/ssl/certs",
        "root/.ssh",
        "etc/ppp",
        "etc/snmp",
        "etc/ssh",
        "tmp",
    )
    for folder in folders:  # fmt: skip
        (root / folder).mkdir(parents=True, exist_ok=True)
    _keys(root)
    _accounts(root)
    _configuration(root)
    _binaries(root)
    os.chmod(root / "tmp", 0o1777)  # noqa: S103 - the sticky /tmp decoy
    return root


def _write(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    os.chmod(path, mode)


def _keys(root: Path) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write(root / "etc/ssl/private/server.key", rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, _CLEAR
    ), 0o600)  # fmt: skip
    ed_key = ed25519.Ed25519PrivateKey.generate()
    _write(root / "root/.ssh/id_ed25519", ed_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ), 0o600)  # fmt: skip
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - planted weak key
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device.local")])
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(weak.public_key())
        .serial_number(1).not_valid_before(_NOW - dt.timedelta(days=800))
        .not_valid_after(_NOW - dt.timedelta(days=400)).sign(weak, hashes.SHA256())
    )  # fmt: skip
    _write(root / "etc/ssl/certs/device.pem", certificate.public_bytes(serialization.Encoding.PEM))


def _crypt(flag: str, salt: str, password: str) -> str:
    done = subprocess.run(["openssl", "passwd", flag, "-salt", salt, password],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return done.stdout.strip()


def _accounts(root: Path) -> None:
    _write(root / "etc/passwd", "root:x:0:0:root:/root:/bin/sh\nguest:x:1000:1000:guest:/home/guest:/bin/sh\n"
           "admin:x:1001:1001:admin:/home/admin:/bin/sh\ndaemon:x:2:2:daemon:/:/bin/false\n")  # fmt: skip
    root_hash = _crypt("-1", "abcdefgh", "xc3511")  # Mirai's first default credential
    admin_hash = _crypt("-6", "saltsaltsalt", "Zq8#unguessable-and-long")
    _write(root / "etc/shadow", f"root:{root_hash}:19000:0:99999:7:::\nguest::19000:0:99999:7:::\n"
           f"admin:{admin_hash}:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n", 0o600)  # fmt: skip


def _configuration(root: Path) -> None:
    _write(root / "etc/ppp/chap-secrets", "# client server secret IP\nisp-user * s3cr3t-pppass *\n", 0o600)
    _write(root / "etc/snmp/snmpd.conf", "sysLocation lab\nrwcommunity private\n")
    _write(root / "etc/wpa_supplicant.conf", 'network={\n  ssid="plant"\n  psk="hunter2hunter2"\n}\n')
    _write(root / "etc/wpa_supplicant.conf.example", 'network={\n  ssid="x"\n  psk="<your-password>"\n}\n')
    _write(
        root / "usr/bin/cloud-sync.sh",
        "#!/bin/sh\nAWS_ACCESS_KEY_ID=AKIA2E0A8F3B244C9986\nexec sync\n",
        0o755,
    )
    _write(root / "etc/inetd.conf", "telnet stream tcp nowait root /usr/sbin/telnetd telnetd\n"
           "#ftp stream tcp nowait root /usr/sbin/ftpd ftpd\n")  # fmt: skip
    _write(root / "etc/miniupnpd.conf", "ext_ifname=eth0\nsecure_mode=no\n")
    _write(root / "etc/ssh/sshd_config", "Port 22\nPermitRootLogin yes\n")
    _write(root / "etc/rc.local", "#!/bin/sh\nexit 0\n", 0o666)


_C = b"#include <stdio.h>\n#include <string.h>\nint main(int c, char **v) { char b[64]; " \
     b"strcpy(b, c > 1 ? v[1] : \"x\"); puts(b); return 0; }\n"  # fmt: skip


def _gcc(out: Path, *flags: str) -> None:
    source = out.with_suffix(".c")
    source.write_bytes(_C)
    subprocess.run(["gcc", "-O2", *flags, "-o", str(out), str(source)], check=True, capture_output=True)
    source.unlink()


def _binaries(root: Path) -> None:
    _gcc(root / "opt/bin/legacy", "-z", "execstack", "-fno-stack-protector", "-no-pie")
    _gcc(root / "bin/hardened", "-fstack-protector-strong", "-D_FORTIFY_SOURCE=2", "-fPIE", "-pie",
         "-Wl,-z,relro,-z,now")  # fmt: skip
    _gcc(root / "opt/bin/helper", "-fstack-protector-strong", "-fPIE", "-pie", "-Wl,-z,relro,-z,now")
    os.chmod(root / "opt/bin/helper", 0o4755)  # noqa: S103 - the planted setuid binary
    _write(
        root / "bin/busybox", _binary(b"BusyBox v1.24.1 (2016-01-01 00:00:00 UTC) multi-call binary."), 0o755
    )
    _write(root / "usr/lib/libcrypto.so.1.0.0", _binary(b"OpenSSL 1.0.1f 6 Jan 2014"))
    _write(
        root / "usr/lib/libstrings.so",
        _binary(b"-----BEGIN RSA PRIVATE KEY-----\x00%s\x00-----END RSA PRIVATE KEY-----"),
    )


def _binary(*strings: bytes) -> bytes:
    # An ELF magic, noise, and NUL-terminated strings as in a string table.
    return (
        b"\x7fELF"
        + os.urandom(_NOISE)
        + b"".join(b"\x00" + s + b"\x00" + os.urandom(_NOISE) for s in strings)
    )
