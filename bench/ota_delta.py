"""Benchmark: the size of an OTA delta for a small change, against the full compressed image.

Builds, at bench time and deterministically, a firmware-like root filesystem: a generated tree of
``--size-mib`` MiB ("binaries" made of 4-byte words from a small vocabulary, text, already-compressed
data, zero padding), packed with ``mksquashfs -comp xz`` (reproducible: fixed times, root-owned).
Without ``mksquashfs`` the structured bytes themselves are the image. The next release changes one
binary (4 KiB rewritten) and the version file. Prints:

* the full image compressed with zstd -19 (what a device downloads without a delta),
* the zstd patch-from delta, the bsdiff4 delta (skipped above ``BSDIFF_MAX_INPUT``), the chosen one,
  and its ratio to the full compressed image (goal: <= 5%),
* ``make_delta`` and ``apply_delta`` times, median of ``--runs``.

Run: ``.venv/bin/python bench/ota_delta.py [--size-mib 16] [--runs 3]``. Other benches import
:func:`measure`.
"""

from __future__ import annotations

import argparse
import math
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from fleetguard.ota.delta import (
    BSDIFF_MAX_INPUT,
    DeltaMethod,
    apply_delta,
    build_delta,
    compressed_size,
    make_delta,
)

_MIB = 1 << 20


def _chunk(rng: random.Random, kind: str, length: int) -> bytes:
    if kind == "code":
        words = [rng.randbytes(4) for _ in range(512)]
        return b"".join(rng.choices(words, k=length // 4))
    if kind == "text":
        vocabulary = [rng.randbytes(rng.randint(2, 10)).hex().encode() for _ in range(2000)]
        return b" ".join(rng.choices(vocabulary, k=length // 8))[:length]
    if kind == "packed":
        return rng.randbytes(length)
    return bytes(length)


def _tree(root: Path, size: int, seed: int = 1) -> list[Path]:
    """Write files totalling ``size`` bytes under ``root``; return the "binaries"."""
    rng = random.Random(seed)
    binaries: list[Path] = []
    written = index = 0
    while written < size:
        kind = rng.choices(["code", "text", "packed", "zero"], weights=[45, 25, 15, 15])[0]
        length = min(rng.randint(4096, 512 << 10), size - written)
        folder = root / ("bin" if kind == "code" else "usr/share" if kind == "text" else "lib")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{kind}-{index:04d}"
        path.write_bytes(_chunk(rng, kind, length))
        if kind == "code":
            binaries.append(path)
        written, index = written + length, index + 1
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/version").write_text("fleetguard-demo 1.0.0\n")
    return binaries


def _pack(root: Path, image: Path) -> bytes:
    if shutil.which("mksquashfs") is None:
        return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())
    command = ["mksquashfs", str(root), str(image), "-comp", "xz", "-noappend", "-quiet", "-no-progress"]
    command += ["-all-root", "-mkfs-time", "0", "-all-time", "0", "-processors", "1"]
    subprocess.run(command, check=True, capture_output=True)
    return image.read_bytes()


def build_release_pair(size_mib: float) -> tuple[bytes, bytes]:
    """Return (old image, new image): the same tree, then one binary and the version file changed."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "root"
        binaries = _tree(root, int(size_mib * _MIB))
        old = _pack(root, Path(folder) / "old.img")
        changed = binaries[len(binaries) // 2]
        data = bytearray(changed.read_bytes())
        middle = len(data) // 2
        data[middle : middle + 4096] = random.Random(2).randbytes(4096)
        changed.write_bytes(bytes(data))
        (root / "etc/version").write_text("fleetguard-demo 1.0.1\n")
        new = _pack(root, Path(folder) / "new.img")
    return old, new


def _median_time(runs: int, action: object) -> float:
    assert callable(action)
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def measure(size_mib: float = 16, runs: int = 3) -> dict[str, float]:
    """Return the bench figures (bytes, ratio, seconds) for a tree of ``size_mib`` MiB."""
    old, new = build_release_pair(size_mib)
    full = compressed_size(new)
    zstd_size = build_delta(DeltaMethod.ZSTD, old, new).size
    fits = max(len(old), len(new)) <= BSDIFF_MAX_INPUT
    bsdiff_size = build_delta(DeltaMethod.BSDIFF, old, new).size if fits else math.nan
    delta = make_delta(old, new, full_compressed_size=full)
    chosen = delta.size if delta is not None else full
    figures = {
        "image_bytes": float(len(new)),
        "full_compressed_bytes": float(full),
        "zstd_delta_bytes": float(zstd_size),
        "bsdiff_delta_bytes": float(bsdiff_size),
        "chosen_bytes": float(chosen),
        "ratio": chosen / full,
        "make_s": _median_time(runs, lambda: make_delta(old, new, full_compressed_size=full)),
        "apply_s": math.nan,
    }
    if delta is not None:
        figures["apply_s"] = _median_time(runs, lambda: apply_delta(old, delta, max_output=len(new)))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=float, default=16, help="size of the generated tree (MiB)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs; the median is printed")
    args = parser.parse_args()
    figures = measure(args.size_mib, args.runs)
    print(f"image (squashfs xz)        {figures['image_bytes']:>12,.0f} bytes")
    print(f"full, zstd -19             {figures['full_compressed_bytes']:>12,.0f} bytes")
    print(f"zstd patch-from delta      {figures['zstd_delta_bytes']:>12,.0f} bytes")
    print(f"bsdiff4 delta              {figures['bsdiff_delta_bytes']:>12,.0f} bytes")
    verdict = "ok" if figures["ratio"] <= 0.05 else "over goal"
    print(f"chosen                     {figures['chosen_bytes']:>12,.0f} bytes")
    print(f"ratio to full compressed   {figures['ratio']:>12.3%}  (goal <= 5%: {verdict})")
    print(f"make_delta (median)        {figures['make_s']:>12.2f} s")
    print(f"apply_delta (median)       {figures['apply_s']:>12.3f} s")


if __name__ == "__main__":
    main()
