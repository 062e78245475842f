"""Code is part of every cache key: an edit that can change a result changes the key; comments do not."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from evalstack.core.fingerprint import import_closure, source_digest
from tests.conftest import REPO

PROBE = """
import json, sys
from evalstack.core.keys import explain_change
from evalstack.preprocess.pipelines import build_pipeline
before = json.loads(sys.argv[1]) if len(sys.argv) > 1 else None
key = build_pipeline({"kind": "pad_regions", "regions": 10}).cache_key()
print(json.dumps({"hex": key.hex, "parts": key.parts,
                  "changes": explain_change(before["parts"], key.parts) if before else []}))
"""


def _copy_library(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    shutil.copytree(REPO / "src/evalstack", src / "evalstack", ignore=shutil.ignore_patterns("__pycache__"))
    return src


def _key(src: Path, before: dict | None = None) -> dict:
    args = [sys.executable, "-c", PROBE] + ([json.dumps(before)] if before else [])
    result = subprocess.run(args, env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"}, capture_output=True,
                            text=True, check=True)
    return json.loads(result.stdout)


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{path} no longer contains {old!r}"
    path.write_text(text.replace(old, new, 1))


def test_an_edit_in_the_closure_changes_the_key_and_is_named(tmp_path: Path):
    src = _copy_library(tmp_path)
    original = _key(src)
    regions = src / "evalstack/preprocess/regions.py"
    _edit(regions, "\ndef ", "\n# a comment above a function changes nothing\ndef ")
    assert _key(src)["hex"] == original["hex"]
    docstring_only = regions.read_text().replace('"""', '"""Reworded. ', 1)
    regions.write_text(docstring_only)
    assert _key(src)["hex"] == original["hex"]
    _edit(src / "evalstack/core/raw.py", "import numpy as np", "import numpy as np\n\nREACTION_TOP = 379")
    edited = _key(src, original)
    assert edited["hex"] != original["hex"]  # core/raw.py (the raw format) is in every pipeline's closure
    assert edited["changes"] == ["code: src/evalstack/core/raw.py changed"]


def test_a_constant_in_a_module_the_pipeline_imports_changes_the_key(tmp_path: Path):
    src = _copy_library(tmp_path)
    original = _key(src)
    regions = src / "evalstack/preprocess/regions.py"
    _edit(regions, "ZONE_TOP = 359", "ZONE_TOP = 379")  # the reaction zone moved down 20 px
    edited = _key(src, original)
    assert edited["hex"] != original["hex"]
    assert edited["changes"] == ["code: src/evalstack/preprocess/regions.py changed"]


def test_a_users_own_pipeline_module_is_part_of_its_key(tmp_path: Path):
    src = _copy_library(tmp_path)
    (src / "my_pipelines.py").write_text(
        "from evalstack.preprocess.regions import PadRegionsPipeline\n\n"
        "class Mine(PadRegionsPipeline):\n    kind = 'mine'\n")
    probe = ("import json; from my_pipelines import Mine; "
             "print(json.dumps(sorted(Mine(regions=10).cache_key().parts['code'])))")
    run = lambda: subprocess.run([sys.executable, "-c", probe], env={"PYTHONPATH": str(src)},  # noqa: E731
                                 capture_output=True, text=True, check=True).stdout
    modules = json.loads(run())
    assert "my_pipelines" in modules and "evalstack.preprocess.pipelines" in modules


def test_closure_follows_imports_inside_functions_and_skips_type_checking_blocks(tmp_path: Path):
    closure = import_closure(["evalstack.models.predictions"])
    assert "evalstack.core.layers" in closure and "evalstack.config" in closure
    assert not any(name.startswith("evalstack.models.adapters") for name in closure)  # TYPE_CHECKING only
    latency = import_closure(["evalstack.models.latency"])
    assert "evalstack.models.adapters.base" not in latency


def test_source_digest_ignores_layout_but_not_values(tmp_path: Path):
    a, b, c = tmp_path / "a.py", tmp_path / "b.py", tmp_path / "c.py"
    a.write_text('"""Doc."""\nX = 1\n\n\ndef f(y):\n    return y + X\n')
    b.write_text('# comment\nX = 1  # one\ndef f(y):\n    """Adds X."""\n    return (y +\n            X)\n')
    c.write_text('"""Doc."""\nX = 2\n\n\ndef f(y):\n    return y + X\n')
    assert source_digest(a) == source_digest(b) != source_digest(c)


def test_a_pipeline_key_covers_its_own_code_not_another_kinds():
    from evalstack.preprocess.pipelines import build_pipeline

    crop = build_pipeline({"kind": "crop_resize"}).cache_key().parts["code"]
    regions = build_pipeline({"kind": "pad_regions"}).cache_key().parts["code"]
    assert "evalstack.preprocess.regions" in regions and "evalstack.preprocess.regions" not in crop
    assert "evalstack.preprocess.pipelines" in crop and "evalstack.cache.incremental" in crop  # the stage's own code


def test_a_library_upgrade_changes_the_keys_of_what_it_computes(monkeypatch):
    """Pillow, numpy, OpenCV and a model's framework compute the bits a pipeline, a model or a corruption cell
    yields: another version on another machine (a shared `store.url`) must not reuse this machine's results."""
    from importlib import metadata

    from evalstack.core.fingerprint import runtime_part
    from evalstack.core.keys import Key
    from evalstack.evaluation.robustness import cell_key
    from evalstack.preprocess.perturbations import Cell
    from evalstack.preprocess.pipelines import build_pipeline

    pipeline = build_pipeline({"kind": "crop_resize", "crop": [0, 0, 64, 64], "resize": 32, "resample": "bilinear"})
    model = Key("model", {"weights_sha256": "ab" * 32})

    def keys() -> tuple[str, str]:
        return pipeline.cache_key().hex, cell_key(model, pipeline.cache_key(), Cell("fog", 1), 0, {}).hex

    before = keys()
    real = metadata.version
    runtime_part.cache_clear()
    monkeypatch.setattr(metadata, "version", lambda name: "99.0" if name == "pillow" else real(name))
    try:
        after = keys()
        assert pipeline.cache_key().parts["runtime"]["pillow"] == "99.0"
    finally:
        monkeypatch.undo()
        runtime_part.cache_clear()
    assert after[0] != before[0] and after[1] != before[1]
    assert keys() == before


def test_locating_a_module_imports_nothing():
    """The closure asks where each dotted candidate lives; `importlib.util.find_spec` would import its parents
    (dask, through evalstack.cache.dask_plugins), a cost every stage process paid to compute one key."""
    probe = ("import sys; from evalstack.core.fingerprint import locate; "
             "from evalstack.preprocess.pipelines import build_pipeline; "
             "assert locate('evalstack.cache.dask_plugins.WorkerPlugin') is None; "
             "found = locate('evalstack.cache.dask_plugins'); "
             "build_pipeline({'kind': 'pad_regions'}).cache_key(); "
             "print(found.path.name, sorted(m for m in ('distributed', 'dask', 'evalstack.cache.dask_plugins') "
             "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["dask_plugins.py", "[]"]


def test_locate_finds_what_the_import_system_finds():
    """Every module of the package, and names that are attributes or missing, resolve as find_spec resolves them."""
    import importlib.util
    import pkgutil

    import evalstack
    from evalstack.core.fingerprint import locate

    def imported(name: str) -> Path | None:
        try:
            spec = importlib.util.find_spec(name)
        except ImportError:  # a parent is a module, not a package, or does not exist
            return None
        return Path(spec.origin) if spec is not None and (spec.origin or "").endswith(".py") else None

    names = [info.name for info in pkgutil.walk_packages(evalstack.__path__, "evalstack.")]
    names += ["evalstack", "evalstack.core.layers.Layer", "evalstack.no_such_module", "evalstack.core.no.such",
              "numpy", "numpy.linalg", "yaml", "no_such_top_level"]
    assert len(names) > 100
    for name in names:
        found = locate(name)
        assert (found.path if found else None) == imported(name), name


SOURCE = '''"""A module."""
import evalstack.core.keys
from . import sibling
NAME = "evalstack.core.layers"
VALUE = 1
'''


def _fresh_parse(monkeypatch, path: Path):
    """parsed_source as a new process sees it: nothing remembered in memory."""
    from evalstack.core import fingerprint

    fingerprint._parsed.cache_clear()
    return fingerprint.parsed_source(path)


def test_a_parse_is_remembered_beside_the_source_and_used_by_the_next_process(tmp_path, monkeypatch):
    from evalstack.core import fingerprint

    module = tmp_path / "pkg" / "mod.py"
    module.parent.mkdir()
    module.write_text(SOURCE)
    first = _fresh_parse(monkeypatch, module)
    assert fingerprint.sidecar_path(module).is_file()
    assert first.strings == ("evalstack.core.layers",) and ("import", "evalstack.core.keys", "evalstack") in first.imports

    def no_parse(*args, **kwargs):
        raise AssertionError("parsed again although the sidecar holds this file's parse")

    monkeypatch.setattr(fingerprint.ast, "parse", no_parse)
    assert _fresh_parse(monkeypatch, module) == first  # read back, not parsed
    monkeypatch.undo()

    module.write_text(SOURCE.replace("VALUE = 1", "VALUE = 22"))  # an edit: another size and mtime, a new parse
    edited = _fresh_parse(monkeypatch, module)
    assert edited.digest != first.digest and edited.imports == first.imports
    module.write_text(SOURCE.replace('"""A module."""', '"""Another docstring."""'))
    assert _fresh_parse(monkeypatch, module).digest == first.digest  # docstrings never count


def test_a_sidecar_from_another_python_other_rules_or_damaged_is_not_used(tmp_path, monkeypatch):
    from evalstack.core import fingerprint

    module = tmp_path / "mod.py"
    module.write_text(SOURCE)
    truth = _fresh_parse(monkeypatch, module)
    sidecar = fingerprint.sidecar_path(module)
    record = json.loads(sidecar.read_text())
    for field, value in (("python", "2.7.18"), ("rules", "0" * 64)):
        sidecar.write_text(json.dumps({**record, "digest": "f" * 64, "stamp": {**record["stamp"], field: value}}))
        assert _fresh_parse(monkeypatch, module) == truth
    sidecar.write_text("{not json")
    assert _fresh_parse(monkeypatch, module) == truth
    # where nothing can be written (a read-only installation), every process parses: same answer, no error
    shutil.rmtree(sidecar.parent)
    sidecar.parent.write_text("not a directory")
    assert _fresh_parse(monkeypatch, module) == truth


def test_a_module_edited_after_this_process_loaded_it_is_refused_until_reloaded(tmp_path: Path, monkeypatch):
    """A notebook imports the user's adapter module, runs it, then the file is edited and run again without
    a reload: a key naming the edited code would keep the old code's results under it, for every later run
    (a `dvc repro` too). Refused, until the module is reloaded; an edit of comments only is no edit."""
    import importlib
    import os

    import pytest

    from evalstack.core.fingerprint import StaleCodeError, check_code_runs, code_part, defining_module

    package = tmp_path / "users_models"
    package.mkdir()
    (package / "__init__.py").write_text("")
    module = package / "scaled.py"
    module.write_text("FACTOR = 1.0\n\n\ndef scale(x):\n    return x * FACTOR\n\n\nclass Scaler:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "users_models", raising=False)
    monkeypatch.delitem(sys.modules, "users_models.scaled", raising=False)
    scaled = importlib.import_module("users_models.scaled")
    first = code_part("users_models.scaled")
    made_before = scaled.Scaler()

    def edit(text: str, bump: int) -> None:
        module.write_text(text)
        stat = module.stat()
        os.utime(module, ns=(stat.st_atime_ns, stat.st_mtime_ns + bump * 1_000_000_000))

    tail = "\n\n\ndef scale(x):\n    return x * FACTOR\n\n\nclass Scaler:\n    pass\n"
    edit("FACTOR = 1.0  # why: the reference's scale" + tail, 1)
    assert code_part("users_models.scaled") == first  # comments are no part of a key, nor of what runs
    edit("FACTOR = 2.0" + tail, 2)
    check_code_runs(first)  # a key made before the edit, computed by the code loaded then: nothing stale runs
    with pytest.raises(StaleCodeError, match=r"scaled\.py changed after this process loaded users_models\.scaled"):
        code_part("users_models.scaled")
    assert scaled.scale(1.0) == 1.0  # what would have computed the result the new key names
    importlib.reload(scaled)
    assert scaled.scale(1.0) == 2.0 and code_part("users_models.scaled") != first
    # an object made before the reload still runs the old class, while a key would name the new module
    with pytest.raises(StaleCodeError, match="was reloaded after this object was made"):
        defining_module(type(made_before))
    assert defining_module(type(scaled.Scaler())) == "users_models.scaled"


def test_a_users_module_key_covers_the_helpers_it_imports_and_not_installed_libraries(tmp_path: Path, monkeypatch):
    """A user's adapter or pipeline outside evalstack imports a helper of theirs: an edit there changes what
    the adapter computes, so it must change the key (else the stored result of the old helper is reused). The
    closure is found again after an edit, so a helper imported from then on counts in a long-lived process."""
    from evalstack.core.fingerprint import code_part

    package = tmp_path / "lab_helpers_user"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helpers.py").write_text("FACTOR = 1.0\n")
    (package / "nearby.py").write_text("OFFSET = 0\n")
    (tmp_path / "lab_toplevel_helper.py").write_text("SCALE = 1\n")
    adapter = package / "adapter.py"
    adapter.write_text("import json\nimport numpy as np\nimport lab_toplevel_helper\nfrom . import nearby\n"
                       "from lab_helpers_user.helpers import FACTOR\nfrom evalstack.core.atomic import atomic_write_bytes\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    first = code_part("lab_helpers_user.adapter")
    assert {"lab_helpers_user", "lab_helpers_user.adapter", "lab_helpers_user.helpers", "lab_helpers_user.nearby",
            "lab_toplevel_helper", "evalstack.core.atomic"} <= set(first)
    assert not {"json", "numpy"} & set(first)  # installed: the standard library and site-packages

    (package / "helpers.py").write_text("FACTOR = 2.0\n")
    edited = code_part("lab_helpers_user.adapter")
    assert [name for name in first if first[name] != edited[name]] == ["lab_helpers_user.helpers"]

    # a helper written after the closure was found, imported by an edit of the adapter
    (package / "later.py").write_text("ROUNDS = 3\n")
    adapter.write_text(adapter.read_text() + "from lab_helpers_user import later\n")
    assert "lab_helpers_user.later" in code_part("lab_helpers_user.adapter")

    # one imported by name; one whose coding declaration decides what its bytes say
    (package / "by_name.py").write_text("ROUNDS = 1\n")
    cookie = package / "declared.py"
    cookie.write_bytes("# -*- coding: latin-1 -*-\nDRUG = 'ferrous sulfaté'\n".encode("utf-8"))
    adapter.write_text(adapter.read_text() + "import importlib\nfrom lab_helpers_user import declared\n"
                       "BY_NAME = importlib.import_module('lab_helpers_user.by_name')\n")
    with_both = code_part("lab_helpers_user.adapter")
    assert {"lab_helpers_user.by_name", "lab_helpers_user.declared"} <= set(with_both)
    cookie.write_bytes(cookie.read_bytes().replace(b"latin-1", b"utf-8  "))  # same size, another string
    assert code_part("lab_helpers_user.adapter")["lab_helpers_user.declared"] != with_both["lab_helpers_user.declared"]

    # a helper renamed, and the adapter edited to match: the closure is found again, not a FileNotFoundError
    (package / "declared.py").rename(package / "renamed.py")
    adapter.write_text(adapter.read_text().replace("import declared", "import renamed"))
    renamed = code_part("lab_helpers_user.adapter")
    assert "lab_helpers_user.renamed" in renamed and "lab_helpers_user.declared" not in renamed


def test_an_edit_between_the_import_and_the_first_key_is_refused(tmp_path: Path, monkeypatch):
    """A notebook imports the user's module at the top, the user edits the file, then runs: the process runs
    what it imported, so a key naming the edited file is refused. Both when evalstack was imported first (the
    load is witnessed) and when the user's module was imported before anything of evalstack (its bytecode
    says the file changed since)."""
    import importlib
    import os

    import pytest

    from evalstack.core.fingerprint import StaleCodeError, code_part

    def edit(path: Path, text: str) -> None:
        stat = path.stat()
        path.write_text(text)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))

    module = tmp_path / "witnessed_helper.py"
    module.write_text("FACTOR = 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "witnessed_helper", raising=False)
    importlib.import_module("witnessed_helper")
    edit(module, "FACTOR = 1.0  # a comment is no edit of what runs\n")
    code_part("witnessed_helper")
    monkeypatch.delitem(sys.modules, "witnessed_helper")
    importlib.import_module("witnessed_helper")
    edit(module, "FACTOR = 2.0\n")
    with pytest.raises(StaleCodeError, match="changed after this process loaded witnessed_helper"):
        code_part("witnessed_helper")

    # A module imported before anything of evalstack, and one another loader ran (an editable install's finder,
    # another library's import hook): both edited after evalstack's import, before a key covers them. A fresh
    # process, so that the witness starts at a known point.
    (tmp_path / "imported_before_evalstack.py").write_text("FACTOR = 1.0\n")
    (tmp_path / "loaded_by_file.py").write_text("FACTOR = 1.0\n")
    probe = """
import importlib.util, os, pathlib, sys
import imported_before_evalstack
from evalstack.core.fingerprint import StaleCodeError, code_part
spec = importlib.util.spec_from_file_location("loaded_by_file", sys.argv[1] + "/loaded_by_file.py")
module = sys.modules["loaded_by_file"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
for name in ("imported_before_evalstack", "loaded_by_file"):  # edited before any key covers them
    path = pathlib.Path(sys.argv[1]) / (name + ".py")
    stat = path.stat()
    path.write_text("FACTOR = 2.0\\n")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    try:
        code_part(name)
        print(name, "not refused")
    except StaleCodeError:
        print(name, "refused")
"""
    environment = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO / 'src'}", "PATH": "/usr/bin:/bin"}
    printed = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], env=environment, capture_output=True,
                             text=True, check=True).stdout.split("\n")
    assert printed[:2] == ["imported_before_evalstack refused", "loaded_by_file refused"]


def test_a_module_that_took_names_from_a_reloaded_helper_is_refused_until_reloaded_too(tmp_path: Path, monkeypatch):
    """`from helpers import FACTOR` binds the old value: reloading only the edited helper (what a notebook's
    autoreload does for the file that changed) leaves the adapter computing with it, under a key that names
    the new helper."""
    import importlib

    import pytest

    from evalstack.core.fingerprint import StaleCodeError, code_part, defining_module

    helper = tmp_path / "took_helper.py"
    helper.write_text("FACTOR = 1.0\n\n\nclass Base:\n    def scale(self, x):\n        return x * FACTOR\n")
    modules = {
        "took_adapter": "from took_helper import FACTOR\n\n\ndef scale(x):\n    return x * FACTOR\n",
        # reads the module at each call: a reload updates it in place
        "took_module": "import took_helper\n\n\ndef scale(x):\n    return x * took_helper.FACTOR\n",
        # reads it while it executes: a copy of the value, and a class derived from the old Base
        "took_copy": "import took_helper\n\nSCALE = took_helper.FACTOR * 10\n",
        "took_derived": "import took_helper\n\n\nclass Derived(took_helper.Base):\n    pass\n",
        # takes a value from a module that computed it from took_helper (not itself reloaded with other code)
        "took_mid": "from took_helper import FACTOR\n\nDOUBLE = 2 * FACTOR\n",
        "took_far": "from took_mid import DOUBLE\n",
    }
    for name, text in modules.items():
        (tmp_path / f"{name}.py").write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("took_helper", *modules):
        monkeypatch.delitem(sys.modules, name, raising=False)
    loaded = {name: importlib.import_module(name) for name in modules}
    adapter = loaded["took_adapter"]
    first = code_part("took_adapter")

    helper.write_text(helper.read_text() + "# reviewed\n")  # a reload that changes nothing that runs
    importlib.reload(sys.modules["took_helper"])
    assert code_part("took_adapter") == first
    for name in modules:
        code_part(name)
    defining_module(loaded["took_derived"].Derived)

    helper.write_text(helper.read_text().replace("FACTOR = 1.0", "FACTOR = 2.0"))
    importlib.reload(sys.modules["took_helper"])
    importlib.reload(sys.modules["took_mid"])  # the same code, computing DOUBLE again from the new FACTOR
    assert adapter.scale(1.0) == 1.0 and loaded["took_module"].scale(1.0) == 2.0
    code_part("took_module")  # the new FACTOR at each call
    for name in ("took_adapter", "took_copy", "took_derived", "took_far"):
        with pytest.raises(StaleCodeError, match=f"after {name} took names from it"):
            code_part(name)
    with pytest.raises(StaleCodeError, match="took_helper was reloaded after took_derived.Derived was defined"):
        defining_module(loaded["took_derived"].Derived)  # its class still derives from the old Base
    importlib.reload(adapter)
    assert adapter.scale(1.0) == 2.0 and code_part("took_adapter") != first


def test_a_package_a_users_module_imports_reinstalled_without_a_new_version_changes_its_key(tmp_path: Path,
                                                                                            monkeypatch):
    """The lab's own package, installed without -e, edited and installed again under the same version: its code is
    not followed (installed), but its RECORD (every installed file's sha256) is in the key of a user's module that
    imports it. A process that loaded the old install refuses the new one's key."""
    import base64
    import hashlib

    import pytest

    from evalstack.core.fingerprint import StaleCodeError, code_part

    site_dir = tmp_path / "site"
    (site_dir / "labinst").mkdir(parents=True)
    info = site_dir / "labinst-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: labinst\nVersion: 1.0\n")

    def install(text: str) -> None:
        module = site_dir / "labinst/__init__.py"
        module.write_text(text)
        digest = base64.urlsafe_b64encode(hashlib.sha256(module.read_bytes()).digest()).rstrip(b"=").decode()
        (info / "RECORD").write_text(f"labinst/__init__.py,sha256={digest},{module.stat().st_size}\n"
                                     "labinst-1.0.dist-info/RECORD,,\n")

    install("SCALE = 1\n")
    users = tmp_path / "users"
    users.mkdir()
    (users / "uses_labinst.py").write_text("import json\n\nimport labinst\nimport numpy\n")
    monkeypatch.syspath_prepend(str(site_dir))
    monkeypatch.syspath_prepend(str(users))
    monkeypatch.delitem(sys.modules, "labinst", raising=False)
    import labinst  # noqa: F401 - loaded in this process, as the user's module would

    first = code_part("uses_labinst")
    assert "labinst" not in first and not any("json" in name for name in first)  # installed: not followed
    assert first["installed:labinst"].startswith("1.0 ") and first["installed:numpy"].split()[0] == np.__version__

    (info / "INSTALLER").write_text("uv\n")  # who installed it, and where its scripts are, is not its code
    with open(info / "RECORD", "a") as record:
        record.write("labinst-1.0.dist-info/INSTALLER,sha256=abc,3\n../../../bin/labinst,sha256=def,40\n")
    assert code_part("uses_labinst")["installed:labinst"] == first["installed:labinst"]

    install("SCALE = 2\n")  # edited, installed again, the same version
    probe = "import json, sys; from evalstack.core.fingerprint import code_part; print(json.dumps(code_part('uses_labinst')))"
    environment = {"PYTHONPATH": os.pathsep.join([str(users), str(site_dir), str(REPO / "src")]), "PATH": "/usr/bin:/bin"}
    fresh = json.loads(subprocess.run([sys.executable, "-c", probe], env=environment, capture_output=True, text=True,
                                      check=True).stdout)
    assert fresh["installed:labinst"] != first["installed:labinst"] and fresh["uses_labinst"] == first["uses_labinst"]
    with pytest.raises(StaleCodeError, match="labinst was installed again after this process loaded it"):
        code_part("uses_labinst")


def test_a_package_linked_into_site_packages_from_the_project_is_followed(tmp_path: Path, monkeypatch):
    """`flit install --symlink` (or ln -s) puts the project's package into site-packages as a link: it is the
    user's code where it resolves, so its helper's edit changes the key; a package its distribution's record
    lists is installed, and not followed, but a project in a folder that merely holds a distribution is not."""
    from evalstack.core.fingerprint import code_part, is_installed

    project = tmp_path / "project/devlab"
    project.mkdir(parents=True)
    (project / "__init__.py").write_text("")
    (project / "helpers.py").write_text("FACTOR = 1.0\n")
    (project / "adapter.py").write_text("from devlab.helpers import FACTOR\n")
    site_dir = tmp_path / "site"
    (site_dir / "other-1.0.dist-info").mkdir(parents=True)  # a folder of installed distributions
    (site_dir / "other-1.0.dist-info/RECORD").write_text("other/__init__.py,sha256=abc,0\n")
    (site_dir / "other").mkdir()
    (site_dir / "other/__init__.py").write_text("")
    (site_dir / "devlab").symlink_to(project, target_is_directory=True)
    # the project itself sits in a folder holding a distribution (a deploy folder filled by `pip install -t .`)
    (tmp_path / "unrelated-2.0.dist-info").mkdir()
    (tmp_path / "unrelated-2.0.dist-info/RECORD").write_text("unrelated.py,sha256=abc,0\n")
    monkeypatch.syspath_prepend(str(site_dir))
    first = code_part("devlab.adapter")
    assert "devlab.helpers" in first
    assert is_installed(site_dir / "other/__init__.py") and not is_installed(project / "helpers.py")
    (project / "helpers.py").write_text("FACTOR = 2.0\n")
    assert code_part("devlab.adapter")["devlab.helpers"] != first["devlab.helpers"]


def test_a_library_installed_under_another_distribution_name_is_keyed_by_it(tmp_path, monkeypatch):
    """onnxruntime-gpu writes `onnxruntime/`, opencv-python `cv2/`, beside the distribution a key names or instead
    of it: an upgrade of the one that runs must change the key, not leave it at the named version or "absent"."""
    from evalstack.core.fingerprint import IMPORT_PACKAGES, runtime_part

    site = tmp_path / "site"
    (site / "fakert").mkdir(parents=True)
    (site / "fakert/__init__.py").write_text("")

    def install(name: str, version: str, record: bytes | None = None) -> None:
        for old in site.glob(f"{name.replace('-', '_')}-*.dist-info"):
            shutil.rmtree(old)
        info = site / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        (info / "RECORD").write_bytes(record or f"fakert/__init__.py,sha256=x,0\n{info.name}/METADATA,,\n".encode())

    def part() -> dict[str, str]:
        runtime_part.cache_clear()
        return runtime_part("fakert", "fakert-cpu", "fakert-absent")

    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setitem(IMPORT_PACKAGES, "fakert-cpu", "fakert")
    try:
        seen = []
        for version in ("1.0", "1.1"):  # the named distribution absent, another one installed and upgraded
            install("fakert-gpu", version)
            seen.append(part())
        assert seen == [{"fakert": f"fakert-gpu {v}", "fakert-cpu": f"fakert-gpu {v}", "fakert-absent": "absent"}
                        for v in ("1.0", "1.1")]
        install("fakert", "2.0")  # both installed: the last one written is what runs, so both are keyed
        assert part()["fakert"] == "fakert 2.0 + fakert-gpu 1.1"
        install("fakert-gpu", "1.2")
        assert part()["fakert"] == "fakert 2.0 + fakert-gpu 1.2"
        install("fakert-gpu", "1.2", record=b"\xff\xfe not a RECORD")  # malformed: best effort, no error
        assert part()["fakert"] == "2.0"
    finally:
        runtime_part.cache_clear()
