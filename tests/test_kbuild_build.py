"""A build that cannot be made is that kernel's error row, and the other kernels still run:
a patch that does not apply (the whole path up to make, on a small real tree), and make
failing (real make on a one-rule Makefile standing in for the kernel's)."""

from __future__ import annotations

import json
import shutil

import pytest
from kbuild_trees import hunk, make_tree, write_patch

from uffdharness import cli
from uffdharness.matrix import hosttools
from uffdharness.matrix import runner as matrix_runner
from uffdharness.matrix.kbuild import build, identity


def test_a_patch_that_does_not_apply_is_an_error_row_and_the_host_still_runs(
    tmp_path, monkeypatch, capsys
):
    problems = hosttools.check(hosttools.BOOT_TOOLS + hosttools.BUILD_TOOLS)
    if problems:
        pytest.skip(str(hosttools.MissingHostTools(problems)))
    try:
        matrix_runner.guest_python()  # the command refuses (exit 2) a python guests cannot see
    except matrix_runner.MatrixError as exc:
        pytest.skip(str(exc))
    monkeypatch.setenv("UFFDHARNESS_KERNEL_CACHE", str(tmp_path / "cache"))
    tree = make_tree(tmp_path / "linux")
    stale = write_patch(tmp_path / "stale.patch", hunk(30, "line 99", "LINE 30"))
    out = tmp_path / "m.json"
    spec = f"src:{tree},patch={stale}"
    rc = cli.main(
        ["matrix", "--kernel", "host", "--kernel", spec, "-k", "api-probe", "--json", str(out)]
    )
    assert rc == 1
    host, built = json.loads(out.read_text())["kernels"]
    assert [(r["id"], r["verdict"]) for r in host["results"]] == [("api-probe", "pass")]
    (row,) = built["results"]
    assert (row["id"], row["verdict"]) == ("guest", "error")
    assert (
        "patch stale.patch does not apply: fs/uffd.c hunk #1 "
        "(@@ -27,7 +27,7 @@ static int f(void)) FAILED at line 27" in row["reason"]
    )
    assert (tree / "fs" / "uffd.c").read_text().count("LINE") == 0
    # the reason is in the table (stderr only says the kernel could not be prepared)
    assert "does not apply" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_a_failing_make_names_the_first_error_without_the_farm_path(tmp_path):
    farm = tmp_path / "farm"
    farm.mkdir()
    (farm / "Makefile").write_text(
        "bzImage:\n\t@echo '  CC      fs/uffd.o'\n"
        f"\t@echo '{farm}/fs/uffd.c:3:1: error: expected declaration'\n"
        "\t@for n in 1 2 3 4 5; do echo noise $$n; done\n\t@false\n"
    )
    source = build.SourceTree(tmp_path, identity.SourceIdentity("files", "x"), "x", "x")
    log = tmp_path / "build.log"
    said: list[str] = []
    make = build._Make(build.BuildRequest(source), farm, tmp_path / "obj", log, said.append)
    with pytest.raises(build.BuildError) as failure:
        make.run("bzImage", jobs=2, what="test")
    message = str(failure.value)
    assert message.startswith(
        f"build failed: fs/uffd.c:3:1: error: expected declaration (log: {log})\n"
    )
    assert "noise 5" in message  # the log's tail
    assert failure.value.log == log and "$ make -C" in log.read_text()
