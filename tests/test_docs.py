"""The documentation runs as written: every python and bash block of README.md and docs/*.md, in a fresh copy.

A block runs in the default suite unless an HTML comment on the line before its fence says otherwise:
`<!-- slow: REASON -->` runs it only with `-m slow`, `<!-- not run: REASON -->` never runs it. Both need a reason.
Blocks run from the root of a copy of the repository whose `../shared` is the project's shared folder, with the
offline setup of the README, so that relative paths resolve as in a fresh clone. The quick blocks find a trained
folder at the path `balm-tsf train` writes, made first from a tiny model and calibrated as training does; the slow
blocks start from a bare copy.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO_ROOT, SHARED_DIR


DOC_FILES = ["README.md", *sorted(str(path.relative_to(REPO_ROOT)) for path in (REPO_ROOT / "docs").glob("*.md"))]
DEFAULT_FOLDER = Path("outputs/balm-tsf-default-etth1-96-96/final")
README_TEST_COMMAND = "HF_HUB_OFFLINE=1 python -m pytest -q"
MAX_README_LINES = 170
# Development history has no place in the repository; written in pieces so that this file does not match itself.
DEVELOPMENT_WORDS = "se" + "ssion|issue tr" + "acker|SPEC se" + "ction"
PROTOCOL_SECTIONS = {
    1: "Shapes and names",
    2: "Forward pass (paper mode)",
    3: "Data protocol",
    4: "Training protocol",
    5: "Published numbers",
    6: "Backbones",
    7: "Beyond the paper",
}

_FENCE = re.compile(r"^```(\w*)\s*$")
_MARKER = re.compile(r"^<!--\s*(?P<kind>[\w ]+?)\s*:\s*(?P<reason>.*?)\s*-->$")
_MARKER_KINDS = {"slow", "not run"}


@dataclass(frozen=True)
class Block:
    """One fenced block of a markdown file."""

    path: str
    line: int
    language: str
    code: str
    mode: str  # "quick", "slow" or "not run"
    reason: str = ""

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"


def parse_blocks(text: str, path: str) -> list[Block]:
    """The ```python and ```bash blocks of a markdown text, with the marker on the line before each fence.

    Raises:
        ValueError: a marker of an unknown kind, a marker without a reason, or a fence that is never closed.
    """
    lines = text.splitlines()
    blocks = []
    index = 0
    while index < len(lines):
        fence = _FENCE.match(lines[index])
        if fence is None:
            index += 1
            continue
        start = index
        end = next((i for i in range(start + 1, len(lines)) if lines[i].strip() == "```"), None)
        if end is None:
            raise ValueError(f"{path}:{start + 1}: the block opened here is never closed")
        index = end + 1
        language = fence.group(1)
        if language not in ("python", "bash"):
            continue
        previous = next((lines[i].strip() for i in range(start - 1, -1, -1) if lines[i].strip()), "")
        mode, reason = "quick", ""
        if previous.startswith("<!--"):
            marker = _MARKER.match(previous)
            if marker is None or marker.group("kind") not in _MARKER_KINDS:
                raise ValueError(
                    f"{path}:{start + 1}: unknown marker {previous!r}; use <!-- slow: REASON --> or "
                    "<!-- not run: REASON -->"
                )
            if not marker.group("reason"):
                raise ValueError(f"{path}:{start + 1}: the marker {previous!r} needs a reason")
            mode, reason = marker.group("kind"), marker.group("reason")
        code = "\n".join(lines[start + 1 : end]) + "\n"
        blocks.append(Block(path, start + 1, language, code, mode, reason))
    return blocks


def doc_blocks(mode: str) -> list[Block]:
    blocks = []
    for path in DOC_FILES:
        blocks += parse_blocks((REPO_ROOT / path).read_text(encoding="utf-8"), path)
    return [block for block in blocks if block.mode == mode]


def make_workspace(root: Path) -> Path:
    """A copy of the repository's files (tracked and new, not ignored) in `root/balm-tsf`, next to `root/shared`."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    repo = root / "balm-tsf"
    for name in filter(None, listed.split("\0")):
        source = REPO_ROOT / name
        if source.is_file():
            target = repo / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    (root / "shared").symlink_to(SHARED_DIR.resolve(), target_is_directory=True)
    return repo


def block_environment(repo: Path) -> dict[str, str]:
    """The README's offline setup, with this interpreter's tools first on PATH and the copy's code importable."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_EVALUATE_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        BALM_TSF_DATA_DIR="../shared/datasets",
        HF_HUB_CACHE=str(hub_cache(repo)),
        PYTHONPATH=str(repo),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        MPLBACKEND="Agg",
    )
    return env


def run_block(block: Block, repo: Path, timeout: float) -> None:
    if block.language == "python":
        command = [sys.executable, "-c", block.code]
    else:
        command = ["bash", "-e", "-u", "-o", "pipefail", "-c", block.code]
    result = subprocess.run(
        command, cwd=repo, env=block_environment(repo), capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, (
        f"{block.id} ({block.language}) failed with exit status {result.returncode}:\n{block.code}\n"
        f"--- stdout ---\n{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-4000:]}"
    )


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """
    A fresh copy with a trained folder (a tiny model) where `balm-tsf train` writes the default experiment's,
    calibrated on its validation split as `balm-tsf train` calibrates its final folder.
    """
    from conftest import DATA_DIR
    from test_hub import build_trained_folder

    from balm_hf.calibration import calibrate_folder

    repo = make_workspace(tmp_path_factory.mktemp("clone"))
    folder = build_trained_folder(repo / DEFAULT_FOLDER)
    calibrate_folder(folder, data_dir=DATA_DIR)
    cache_backbone(folder, hub_cache(repo))
    return repo


def hub_cache(repo: Path) -> Path:
    """The Hub cache of the blocks run in `repo` (`HF_HUB_CACHE`), beside the copy."""
    return repo.parent / "hub-cache"


def cache_backbone(folder: Path, cache: Path) -> None:
    """
    Put the tiny folder's own backbone into the Hub cache under the id the folder records, laid out as a download
    leaves it, as the real backbone of a trained folder is on a user's machine: a lean copy of the folder (what
    `balm-tsf push` uploads by default) then rebuilds and verifies its backbone offline.
    """
    from balm_hf import BalmTsfForForecasting

    model = BalmTsfForForecasting.from_pretrained(folder)
    repo = cache / ("models--" + model.config.llm_name_or_path.replace("/", "--"))
    commit = "0" * 40
    model.get_text_encoder().llm.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


# -- the blocks -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("block", doc_blocks("quick"), ids=lambda block: block.id)
def test_quick_documentation_block_runs_as_written(block, workspace):
    run_block(block, workspace, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("block", doc_blocks("slow"), ids=lambda block: block.id)
def test_slow_documentation_block_runs_as_written_in_a_bare_copy(block, tmp_path):
    run_block(block, make_workspace(tmp_path), timeout=3600)


def test_documentation_has_quick_slow_and_skipped_blocks_each_with_a_reason():
    quick, slow, skipped = doc_blocks("quick"), doc_blocks("slow"), doc_blocks("not run")
    assert quick and slow and skipped
    assert all(block.reason for block in slow + skipped)
    readme_quick = [block for block in quick if block.path == "README.md"]
    assert any("forecast(" in block.code for block in readme_quick), "the README's quick start must run"


def test_markers_without_a_reason_or_of_an_unknown_kind_are_refused():
    with pytest.raises(ValueError, match=r"doc.md:2: the marker .* needs a reason"):
        parse_blocks("<!-- not run: -->\n```bash\nls\n```\n", "doc.md")
    with pytest.raises(ValueError, match=r"doc.md:2: unknown marker '<!-- later -->'"):
        parse_blocks("<!-- later -->\n```python\npass\n```\n", "doc.md")
    with pytest.raises(ValueError, match=r"doc.md:1: the block opened here is never closed"):
        parse_blocks("```python\npass\n", "doc.md")


def test_parser_reads_marked_and_unmarked_blocks_and_ignores_other_languages():
    text = (
        "x\n\n<!-- slow: trains -->\n\n```bash\nbalm-tsf train\n```\n```bibtex\n@a{}\n```\n```python\nprint(1)\n```\n"
    )
    blocks = parse_blocks(text, "doc.md")
    assert [(b.line, b.language, b.code, b.mode, b.reason) for b in blocks] == [
        (5, "bash", "balm-tsf train\n", "slow", "trains"),
        (11, "python", "print(1)\n", "quick", ""),
    ]


# -- the README and the repository ------------------------------------------------------------------------------------


def test_readme_has_at_most_170_lines():
    lines = (REPO_ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines, at most {MAX_README_LINES} allowed"


def test_readme_gives_the_exact_test_command_that_ci_runs():
    blocks = parse_blocks((REPO_ROOT / "README.md").read_text(encoding="utf-8"), "README.md")
    assert any(block.code.strip() == README_TEST_COMMAND for block in blocks)
    ci_script = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "export HF_HUB_OFFLINE=1" in ci_script and "\npython -m pytest -q\n" in ci_script


def test_repository_speaks_of_the_product_only():
    found = subprocess.run(
        ["git", "grep", "-niE", DEVELOPMENT_WORDS, "--", ".", ":!tests/fixtures"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert found.returncode in (0, 1), found.stderr
    hits = [line for line in found.stdout.splitlines() if 'scope="session"' not in line]
    assert not hits, "development history in tracked files:\n" + "\n".join(hits)


def test_protocol_keeps_its_numbered_sections():
    text = (REPO_ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
    headings = re.findall(r"^## (\d+) (.+)$", text, re.MULTILINE)
    assert [(int(number), title) for number, title in headings] == list(PROTOCOL_SECTIONS.items())
    assert "Table 1" in text, "the published numbers name their source"


def test_citations_of_the_protocol_name_existing_sections():
    found = subprocess.run(
        ["git", "grep", "-nohE", r"protocol\.md[`)]? §[0-9]+"], cwd=REPO_ROOT, capture_output=True, text=True
    ).stdout
    cited = {int(match.rsplit("§", 1)[1]) for match in found.splitlines()}
    assert cited, "code and docs cite docs/protocol.md by section"
    assert cited <= set(PROTOCOL_SECTIONS), (
        f"cited sections that do not exist: {sorted(cited - set(PROTOCOL_SECTIONS))}"
    )


@pytest.mark.parametrize("path", [*DOC_FILES, "research/README.md", "configuration/README.md"])
def test_relative_links_point_to_files_that_exist(path):
    source = REPO_ROOT / path
    missing = []
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", source.read_text(encoding="utf-8")):
        if "://" not in target and not (source.parent / target).exists():
            missing.append(target)
    assert not missing, f"{path} links to missing files: {missing}"
