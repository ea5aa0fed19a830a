"""mcp_proxy.build: what `--version` and `run` say about the build, and setup.py agreeing.

CI runs the whole suite twice: interpreted, then with the request path compiled in place
(`MCP_PROXY_COMPILE=1`) and MCP_PROXY_EXPECT_COMPILED=1, where every module setup.py lists
must really be running compiled.
"""

from __future__ import annotations

import ast
import os
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

from mcp_proxy.build import REQUEST_PATH, compiled_modules, describe, source_is_newer

ROOT = Path(__file__).resolve().parents[2]


def setup_py_modules() -> list[str]:
    """setup.py's REQUEST_PATH as module names (read, not run: setup.py calls setup())."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "REQUEST_PATH":
            paths = ast.literal_eval(node.value)
            return [path.removesuffix(".py").replace("/", ".") for path in paths]
    raise AssertionError("setup.py has no REQUEST_PATH")


def test_setup_py_compiles_the_modules_build_imports():
    assert set(REQUEST_PATH) <= set(setup_py_modules())
    for module in setup_py_modules():
        assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), module


def test_describe_says_which_build_runs():
    if compiled_modules():
        assert describe() == f"request path compiled with mypyc ({len(compiled_modules())} modules)"
    else:
        assert describe().startswith("request path interpreted")


@pytest.mark.skipif(
    os.environ.get("MCP_PROXY_EXPECT_COMPILED") != "1", reason="interpreted build expected"
)
def test_every_listed_module_runs_compiled():
    assert compiled_modules() == sorted(setup_py_modules())


def test_an_edited_source_is_newer_than_its_extension(tmp_path: Path):
    extension = tmp_path / f"client{EXTENSION_SUFFIXES[0]}"
    source = tmp_path / "client.py"
    extension.write_bytes(b"")
    source.write_text("")
    os.utime(source, (1_000, 1_000))
    os.utime(extension, (2_000, 2_000))
    assert not source_is_newer(extension)
    os.utime(source, (3_000, 3_000))
    assert source_is_newer(extension)
    source.unlink()
    assert not source_is_newer(extension)
