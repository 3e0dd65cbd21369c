"""Benchmark: the firmware figures of issue 7, beside unblob where the issue names it.

Builds, at bench time, a gzip squashfs and an xz squashfs of this machine's /usr/bin and /usr/sbin
(symlinks kept; the issue asks for ~120 MB and ~100 MB: the sizes are printed), then for each:

(a) end to end   ``scan_image`` (safe extraction, every analyzer, ELF hardening, components,
                 offline vulnerability matching): MB/s of image, median of ``--runs``.
(b) unblob       ``unblob -e`` on the same image in the same run: extraction alone. unblob needs the
                 unpackaged ``sasquatch`` for squashfs; as installed it extracts nothing, so it is run
                 a second time with a ``sasquatch`` that runs Debian's ``unsquashfs`` (its v4 LE
                 behaviour), which is the fair comparison. Goal: ours >= 3x unblob end to end.
(c) scan stage   analyzers + components + matching over the already-extracted tree: MB/s of
                 extracted bytes. Goal: >= 50 MB/s.
(d) start-up     ``fleetguard firmware --help`` wall time, median of 5. Goal: < 1 s.

Run: ``.venv/bin/python bench/firmware.py [--runs 3] [--unblob PATH]`` (unblob: ``pip install unblob``
into any virtual environment; without it (b) is skipped).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fleetguard.firmware.analyzers import ANALYZERS, run_analyzers
from fleetguard.firmware.analyzers.hardening import HardeningAnalyzer
from fleetguard.firmware.components import detect_components
from fleetguard.firmware.extraction import extract_image
from fleetguard.firmware.scan import ScanOptions, scan_image
from fleetguard.firmware.vulndb import VulnDb

_MB = 1_000_000


def _build(work: Path, compression: str) -> Path:
    tree = work / "tree"
    if not tree.exists():
        for source in ("/usr/bin", "/usr/sbin"):
            shutil.copytree(source, tree / source.strip("/"), symlinks=True)
    image = work / f"usr-{compression}.sqsh"
    command = [
        "mksquashfs",
        str(tree),
        str(image),
        "-comp",
        compression,
        "-noappend",
        "-quiet",
        "-no-progress",
    ]
    subprocess.run(command, check=True, capture_output=True)
    return image


def _end_to_end(image: Path, work: Path, db: VulnDb, runs: int) -> tuple[float, int, int]:
    times = []
    findings = components = 0
    for _ in range(runs):
        start = time.perf_counter()
        result = scan_image(image, ScanOptions(work_root=work, vulndb=db), name=image.name)
        times.append(time.perf_counter() - start)
        findings, components = len(result.findings), len(result.components)
    return statistics.median(times), findings, components


def _scan_stage(image: Path, work: Path, db: VulnDb, runs: int) -> tuple[float, int]:
    with tempfile.TemporaryDirectory(dir=work) as folder:
        tree = extract_image(image, Path(folder))
        extracted = sum(e.size for e in tree.files())
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            run_analyzers(tree, (*ANALYZERS, HardeningAnalyzer()))
            db.match(detect_components(tree))
            times.append(time.perf_counter() - start)
    return statistics.median(times), extracted


def _unblob(unblob: str, image: Path, work: Path, *, shim: bool) -> tuple[float, int]:
    out = work / f"unblob-{'shim' if shim else 'plain'}"
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ)
    if shim:
        bin_dir = work / "shim-bin"
        bin_dir.mkdir(exist_ok=True)
        sasquatch = bin_dir / "sasquatch"
        # sasquatch's own -le/-be flags dropped; the rest is unsquashfs's command line.
        sasquatch.write_text(
            '#!/bin/sh\nfor a do shift; case "$a" in -le|-be) ;; *) set -- "$@" "$a" ;; esac; done\n'
            f'exec {shutil.which("unsquashfs")} "$@"\n'
        )
        sasquatch.chmod(0o755)
        env["PATH"] = f"{bin_dir}:{env['PATH']}"
    start = time.perf_counter()
    subprocess.run([unblob, "-e", str(out), str(image)], env=env, capture_output=True, check=False, cwd=work)
    took = time.perf_counter() - start
    files = sum(1 for p in out.rglob("*") if p.is_file() and not p.is_symlink()) if out.exists() else 0
    return took, files


def _startup() -> float:
    program = str(Path(sys.executable).with_name("fleetguard"))
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        subprocess.run([program, "firmware", "--help"], capture_output=True, check=True)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--unblob", default=shutil.which("unblob") or "/tmp/unblob-venv/bin/unblob")  # noqa: S108
    options = parser.parse_args()
    db = VulnDb.load_default()
    with tempfile.TemporaryDirectory(prefix="fleetguard-bench-fw-") as folder:
        work = Path(folder)
        for compression in ("gzip", "xz"):
            image = _build(work, compression)
            size = image.stat().st_size
            ours, findings, components = _end_to_end(image, work, db, options.runs)
            stage, extracted = _scan_stage(image, work, db, options.runs)
            print(f"{compression} squashfs {size / _MB:.1f} MB ({extracted / _MB:.0f} MB extracted): "
                  f"end to end {ours:.2f} s = {size / _MB / ours:.1f} MB/s ({findings} findings, "
                  f"{components} components); scan stage {stage:.2f} s = {extracted / _MB / stage:.0f} MB/s "
                  "(goal >= 50)")  # fmt: skip
            if Path(options.unblob).exists():
                plain, plain_files = _unblob(options.unblob, image, work, shim=False)
                shim, shim_files = _unblob(options.unblob, image, work, shim=True)
                print(f"  unblob as installed: {plain:.2f} s, {plain_files} files (no sasquatch); "
                      f"with unsquashfs as sasquatch: {shim:.2f} s, {shim_files} files; "
                      f"ours end to end is {shim / ours:.1f}x faster (goal >= 3x)")  # fmt: skip
            else:
                print(f"  unblob not found at {options.unblob}: comparison skipped")
    print(f"start-up: fleetguard firmware --help {_startup():.2f} s (median of 5; goal < 1 s)")


if __name__ == "__main__":
    main()
