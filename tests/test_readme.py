"""The README's library example and the library walk-through in docs/decoding.md run as written, so they
cannot rot: each test extracts the page's ```python block and executes it from a directory that holds
`models/embedded`, as a reader in the repository root would."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(page: Path) -> list:
    return re.findall(r"^```python\n(.*?)^```$", page.read_text(), flags=re.M | re.S)


@pytest.fixture
def reader_dir(tmp_path, monkeypatch):
    """An empty working directory with models/ linked in: what a snippet writes stays out of the tree."""
    (tmp_path / "models").symlink_to(ROOT / "models", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(code: str, name: str) -> dict:
    namespace = {"__name__": name}
    exec(compile(code, name, "exec"), namespace)  # noqa: S102 - the documentation's own code
    return namespace


def test_readme_library_example_runs(reader_dir, capsys):
    (code,) = python_blocks(ROOT / "README.md")  # the README holds exactly one Python example
    namespace = run(code, "README.md")
    row = namespace["result"].outputs[0]
    assert 0 < row.new_tokens <= 48 and row.text
    assert 0 < row.acceptance_rate <= 1
    assert "acceptance" in capsys.readouterr().out


def test_decoding_docs_library_walkthrough_runs(reader_dir):
    (code,) = python_blocks(ROOT / "docs" / "decoding.md")
    namespace = run(code, "docs/decoding.md")
    assert namespace["out"].tokens.shape[0] == 2
    assert (reader_dir / "out-dir" / "config.json").is_file()
