"""Apply the answers of `copier copy` / `copier update` (.copier-answers.yml) to the project's files.

Copier runs this task after every render: in a new project, and in the two renders it diffs
during `copier update` (old template + old answers, new template + the same answers). It
must therefore be deterministic and idempotent, and it edits text in place (line blocks by
indentation) so the comments in params.yaml and dvc.yaml survive and a user's later edits
merge cleanly. Standard library + PyYAML (Copier's own dependency) only: it runs under
Copier's Python, before the project has a virtual environment.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import yaml

ROOT = Path.cwd()


def block_span(lines: list[str], key: str, indent: int, start: int = 0) -> tuple[int, int] | None:
    """[first, end) of the YAML block `key:` at `indent` spaces, up to the next line at that indent or less."""
    pattern = re.compile(rf"^ {{{indent}}}{re.escape(key)}:(\s|$)")
    for first in range(start, len(lines)):
        if pattern.match(lines[first]):
            end = first + 1
            while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > indent
                                        or lines[end].lstrip().startswith("#") and _indent(lines[end]) > indent):
                end += 1
            while end > first + 1 and not lines[end - 1].strip():
                end -= 1  # keep the blank line that separates blocks
            return first, end
    return None


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def drop_block(text: str, key: str, indent: int, parent: str | None = None) -> str:
    lines = text.splitlines(keepends=True)
    start = 0
    if parent is not None:
        span = block_span(lines, parent, 0)
        if span is None:
            return text
        start = span[0]
    span = block_span(lines, key, indent, start)
    if span is None:
        return text
    first, end = span
    if end < len(lines) and not lines[end].strip():
        end += 1
    return "".join(lines[:first] + lines[end:])


def replace_block(text: str, key: str, indent: int, new: str, parent: str | None = None) -> str:
    lines = text.splitlines(keepends=True)
    start = block_span(lines, parent, 0)[0] if parent else 0
    span = block_span(lines, key, indent, start)
    if span is None:
        raise SystemExit(f"configure: no `{key}:` block to replace")
    first, end = span
    return "".join(lines[:first]) + new + "".join(lines[end:])


def comment_block(text: str, key: str, indent: int, note: str, parent: str | None = None) -> str:
    """Comment the block out (a note line above it), so a user brings it back by uncommenting it."""
    lines = text.splitlines(keepends=True)
    start = block_span(lines, parent, 0)[0] if parent else 0
    span = block_span(lines, key, indent, start)
    if span is None:
        return text
    first, end = span
    body = [line[:indent] + "# " + line[indent:] if line.strip() else line for line in lines[first:end]]
    return "".join(lines[:first] + [" " * indent + f"# {note}\n"] + body + lines[end:])


def drop_line(text: str, line: str) -> str:
    return "".join(kept for kept in text.splitlines(keepends=True) if kept.strip() != line)


def replace_line(text: str, line: str, replacement: str) -> str:
    return "".join(replacement if kept.strip() == line else kept for kept in text.splitlines(keepends=True))


def local_path(location: str) -> str:
    """A source location on this disk as a dvc.yaml dep (a plain path, or a file:// URL's path, as fetch reads
    it); "" for a server."""
    url = urlparse(location)
    if url.scheme == "file":
        return unquote(url.path)
    return "" if "://" in location else location


def edit(path: Path, change) -> None:
    if path.is_file():
        path.write_text(change(path.read_text()))


def classification_source(answers: dict) -> None:
    kind = answers.get("classification_source", "demo")
    if kind == "demo":
        return
    sources = {  # only the chosen kind's answers exist
        "registry": lambda: ("    kind: registry\n    registries:\n"
                             f"      dev: {answers['registry_dev']}\n      test: {answers['registry_test']}\n"),
        "pad_api": lambda: (f"    kind: pad_api\n    url: {answers['pad_api_url']}\n"
                            + (f"    project: {answers['pad_api_project']}\n" if answers.get("pad_api_project") else "")
                            + "    page_size: 500\n    test_fraction: 0.2\n"),
        "folder": lambda: f"    kind: folder\n    folder: {answers['folder_path']}\n",
    }
    block = "  source:                   # where cards come from (README: \"Fetch from PAD\")\n" + sources[kind]()
    edit(ROOT / "params.yaml", lambda text: replace_block(text, "source", 2, block, parent="fetch"))
    # No embedded dataset: no synth stage. fetch depends on what it reads from this disk instead (DVC reruns it
    # when a folder's images or labels, or a local registry, change; the fetch stage refuses an untracked one),
    # and on nothing for a server (`dvc repro -f fetch` fetches it again).
    local = {"folder": [answers.get("folder_path", "")],
             "registry": [answers.get(f"registry_{split}", "") for split in ("dev", "test")]}.get(kind, [])
    deps = "".join(f"      - {path}  # what fetch reads\n" for path in map(local_path, local) if path)
    edit(ROOT / "dvc.yaml", lambda text: replace_line(drop_block(text, "synth", 2, parent="stages"),
                                                      "- data/source           # the embedded dataset; drop this dep when fetching from a server",
                                                      deps))


def detection_source(answers: dict) -> None:
    if answers.get("detection_source", "demo") == "demo":
        return
    block = ("  splits:                   # split → COCO instances JSON + the folder its file_names are relative to\n"
             f"    val:\n      annotations: {answers['coco_annotations']}\n      images: {answers['coco_images']}\n")
    edit(ROOT / "detection/params.yaml", lambda text: replace_block(text, "splits", 2, block, parent="fetch"))
    deps = "".join(f"      - {path}  # what fetch reads\n"
                   for path in map(local_path, (answers["coco_annotations"], answers["coco_images"])) if path)
    edit(ROOT / "detection/dvc.yaml", lambda text: replace_line(drop_block(text, "synth", 2, parent="stages"),
                                                                "- data/source", deps))


def without_demo_models(answers: dict) -> None:
    if answers.get("keep_demo_models", True):
        return
    no_models = "models: {}                  # add yours: README \"Add a model\" (one entry + a file per model)\n"

    def params(text: str) -> str:
        for key in ("train", "fit_pls", "export"):
            text = drop_block(text, key, 0)
        text = replace_block(text, "models", 0, no_models)
        return re.sub(r"^(  reference: )\S+", r'\1""', text, flags=re.M)

    def pipeline(text: str) -> str:
        for stage in ("train", "fit_pls", "export_onnx"):  # they build the demo models
            text = drop_block(text, stage, 2, parent="stages")
        for stage in ("evaluate", "compare", "robustness_report"):  # without a model they have no inputs
            text = comment_block(text, stage, 2, "uncomment once `models:` in params.yaml lists a model "
                                 "(README \"Add a model\")", parent="stages")
        return text

    edit(ROOT / "params.yaml", params)
    edit(ROOT / "dvc.yaml", pipeline)
    edit(ROOT / "models/.gitignore", lambda text: "")
    edit(ROOT / "detection/params.yaml", lambda text: replace_block(drop_block(text, "train", 0), "models", 0, no_models))
    edit(ROOT / "detection/dvc.yaml", lambda text: drop_block(text, "train", 2, parent="stages"))
    edit(ROOT / "detection/models/.gitignore", lambda text: "")


def remote(answers: dict) -> None:
    if answers.get("remote", "none") == "none":
        return
    url = answers["remote_url"]
    for config, suffix in ((ROOT / ".dvc/config", ""), (ROOT / "detection/.dvc/config", "/detection")):
        if not config.is_file():
            continue
        text = config.read_text()
        if '["remote "storage"]' in text or "['remote \"storage\"']" in text:
            continue
        text = text.replace("[core]\n", "[core]\n    remote = storage\n", 1)
        # each profile is its own DVC project: the detection project keeps its data beside the other's
        text += f"['remote \"storage\"']\n    url = {url.rstrip('/')}{suffix}\n"
        config.write_text(text)


def project_name(answers: dict) -> None:
    name = answers.get("project_name") or "my-eval"
    edit(ROOT / "README.md", lambda text: re.sub(r"\A# evalstack\n", f"# {name}\n\nBuilt from the evalstack template "
                                                "(`copier update` brings its later changes).\n\n", text, count=1))


def main() -> int:
    answers = yaml.safe_load((ROOT / ".copier-answers.yml").read_text()) or {}
    for step in (classification_source, detection_source, without_demo_models, remote, project_name):
        step(answers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
