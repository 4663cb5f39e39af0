"""`make lint`'s type check: mypy over pgsight/, db/ and worker/ as the one `pgsight` package they
install as (db/ is pgsight.db, worker/ is pgsight.worker: pyproject's [tool.setuptools.package-dir]).

mypy has no package-dir mapping, so the installed layout is rebuilt from symbolic links under
build/typecheck/ and mypy checks that; its messages name the files by their paths in the repository.
Settings: [tool.mypy] in pyproject.toml. Arguments are passed to mypy.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TREE = ROOT / "build" / "typecheck"
#: installed name -> directory in the repository (the packages the type check covers)
LAYOUT = {"pgsight": "pgsight", "pgsight/db": "db", "pgsight/worker": "worker", "pgsight/udf": "udf"}


def build_tree() -> None:
    if TREE.exists():
        shutil.rmtree(TREE)
    top = TREE / "pgsight"
    top.mkdir(parents=True)
    for entry in (ROOT / "pgsight").iterdir():
        if entry.name != "__pycache__":
            (top / entry.name).symlink_to(entry)
    for name, directory in LAYOUT.items():
        if name != "pgsight":
            (TREE / name).symlink_to(ROOT / directory, target_is_directory=True)


def main(argv: list[str]) -> int:
    build_tree()
    env = {**os.environ, "MYPYPATH": str(TREE)}
    proc = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
                           "-p", "pgsight", *argv], cwd=ROOT, env=env, capture_output=True, text=True)
    prefix = re.compile("^" + re.escape(os.path.relpath(TREE, ROOT)) + r"/(pgsight/(?:db|worker|udf)/|pgsight/)")
    mapping = {f"{name}/": f"{directory}/" for name, directory in LAYOUT.items()}
    for line in (proc.stdout + proc.stderr).splitlines():
        print(prefix.sub(lambda m: mapping[m.group(1)], line))
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
