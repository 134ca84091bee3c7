"""mltrain/startup.py: the GC is off only while a process imports, and on for the work that follows; a
command or a torchrun worker that left it off would grow without bound on reference cycles."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import gc, json, sys
{setup}
print(json.dumps({{"enabled": gc.isenabled(), "frozen": gc.get_freeze_count()}}))
"""


def probe(setup: str) -> dict:
    r = subprocess.run([sys.executable, "-c", PROBE.format(setup=setup)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_the_cli_leaves_the_gc_on_with_its_imports_frozen():
    got = probe("import mltrain.cli")
    assert got["enabled"] is True
    assert got["frozen"] > 10_000  # typer, rich and the command modules, out of the GC's scans


def test_heavy_imports_freezes_what_it_imported_and_restores_the_gc():
    got = probe("from mltrain.startup import heavy_imports\nwith heavy_imports():\n    import json, decimal")
    assert got["enabled"] is True and got["frozen"] > 0
    off = probe(
        "import gc\ngc.disable()\nfrom mltrain.startup import heavy_imports\nwith heavy_imports():\n    import decimal"
    )
    assert off["enabled"] is False  # it was off before: left off


def test_the_torchrun_module_is_torchrun():
    r = subprocess.run(
        [sys.executable, "-m", "mltrain.launch.torchrun", "--help"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert "--nproc-per-node" in r.stdout and "--rdzv-backend" in r.stdout


def test_a_scripts_gc_comes_back_on_by_itself_and_in_a_forked_child():
    got = probe(
        "import os, time\nfrom mltrain import startup\nstartup.begin_for_a_script(0.3)\n"
        "off = gc.isenabled()\nr, w = os.pipe()\npid = os.fork()\n"
        "if pid == 0:\n    os.write(w, b'1' if gc.isenabled() else b'0')\n    os._exit(0)\n"
        "os.waitpid(pid, 0)\nchild = os.read(r, 1) == b'1'\ntime.sleep(1.0)\n"
        "assert not off and child, (off, child)"
    )
    assert got["enabled"] is True and got["frozen"] > 0  # the timer settled the parent
