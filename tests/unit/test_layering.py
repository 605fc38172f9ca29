"""The house rules of the package layout, checked on the source (STYLE.md, docs/architecture.md): model code
imports torch, not Lightning, Hydra or torch.distributed; only cli/ imports Hydra; no package imports one above
it; no module grows past the size a reader can hold."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "var_lightning"
# lower first; a package imports its own rank's root modules or lower ranks, never higher, and never a sibling
# package of its own rank (training and evaluation, for instance, stand side by side)
RANKS = {
    "keys": 0, "distributed": 0, "seeds": 0, "hashing": 0, "__init__": 0,
    "tokenizer": 1,
    "transformer": 2,
    "data": 3, "checkpoints": 3, "scaling": 3, "objectives": 3,
    "inference": 4,
    "training": 5, "evaluation": 5,
    "callbacks": 6,
    "studies": 7,
    "cli": 8,
}  # fmt: skip
MODEL = ("tokenizer", "transformer")
LIGHTNING = ("pytorch_lightning", "lightning", "lightning_fabric")
HYDRA = ("hydra", "omegaconf")
MAX_LINES = 400


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "conf" not in p.relative_to(PACKAGE).parts)


def home(path: Path) -> str:
    """The package (or root module) a file belongs to: 'cli', 'keys', ..."""
    first = path.relative_to(PACKAGE).parts[0]
    return first.removesuffix(".py")


def imports(path: Path) -> list[tuple[str, int]]:
    """(module, line) of every import in the file, lazy ones included (TYPE_CHECKING ones excluded)."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):  # `if TYPE_CHECKING:` blocks import for annotations only
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            skip |= {id(n) for child in node.body for n in ast.walk(child)}
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "var_lightning":  # from var_lightning import distributed, __version__
                out += [(f"var_lightning.{a.name}", node.lineno) for a in node.names]
            else:
                out.append((node.module, node.lineno))
    return out


def target_home(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "var_lightning":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in RANKS else "__init__"


def test_every_package_has_a_rank():
    assert {home(p) for p in modules()} <= set(RANKS)


def layer_problems(path: Path, me: str, facade: bool = False) -> list[str]:
    """What in ``path`` (a module of package ``me``) breaks the layering rules."""
    problems = []
    for module, line in imports(path):
        top = module.split(".")[0]
        where = f"{path.name}:{line} imports {module}"
        if me in MODEL and (top in LIGHTNING + HYDRA or module.startswith("torch.distributed")):
            problems.append(
                f"{where}: model code is plain torch (collectives through var_lightning.distributed)"
            )
        if top in HYDRA and me != "cli":
            problems.append(f"{where}: only cli/ imports Hydra / OmegaConf")
        if top in LIGHTNING and me in MODEL + (
            "keys",
            "distributed",
            "scaling",
            "objectives",
            "evaluation",
            "inference",
        ):
            problems.append(f"{where}: Lightning belongs to training, data, callbacks and the entry points")
        other = target_home(module)
        if other is None or other == me or facade:  # the root __init__ re-exports every layer's public names
            continue
        if RANKS[other] > RANKS[me]:
            problems.append(f"{where}: an upward import ({me} is below {other})")
        elif RANKS[other] == RANKS[me] and RANKS[me] > 0:
            problems.append(
                f"{where}: {me} and {other} stand side by side (rank {RANKS[me]}); move what both need lower"
            )
    return problems


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_layers(path):
    problems = layer_problems(path, home(path), facade=path == PACKAGE / "__init__.py")
    assert not problems, f"{path.relative_to(PACKAGE)}:\n" + "\n".join(problems)


def test_no_module_is_too_long_to_read():
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in modules()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"split these (over {MAX_LINES} lines): {long}"


def test_the_layering_check_sees_a_violation(tmp_path):
    """The checks above can fail: Lightning in model code, an upward import, and an import between the two
    siblings of rank 5 (evaluation and training) are each found."""
    bad = tmp_path / "bad.py"
    bad.write_text("import pytorch_lightning as L\nfrom var_lightning.training.var_module import VARModule\n")
    found = layer_problems(bad, "transformer")
    assert len(found) == 3 and "plain torch" in found[0] and "Lightning belongs" in found[1]
    assert "upward import (transformer is below training)" in found[2]
    assert layer_problems(bad, "callbacks") == []
    sibling = layer_problems(bad, "evaluation")
    assert len(sibling) == 2 and "evaluation and training stand side by side" in sibling[1]
    assert "Lightning belongs" in sibling[0]


def readme_layout(readme: str) -> dict[str, set[str]]:
    """The README's layout of src/var_lightning/: package ('' for the root modules) -> the .py files named."""
    block = readme.split("## Layout", 1)[1].split("```", 2)[1]
    listed: dict[str, set[str]] = {}
    current = None
    for line in block.splitlines():
        if not line.startswith(" "):  # src/var_lightning/ itself, or a top-level folder (conf/, tests/, ...)
            current = None
            continue
        m = re.match(r"^  (\w+)(/|\.py)\s", line)
        if m:
            current = m.group(1) if m.group(2) == "/" else ""
        if current is not None:
            listed.setdefault(current, set()).update(re.findall(r"\b(\w+\.py)\b", line))
    return listed


def package_files() -> dict[str, set[str]]:
    """The same shape, from the tree."""
    out: dict[str, set[str]] = {"": {p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}}
    for d in PACKAGE.iterdir():
        if d.is_dir() and any(d.glob("*.py")) and d.name != "conf":
            out[d.name] = {p.name for p in d.glob("*.py") if p.name != "__init__.py"}
    return out


def layout_differences(listed: dict[str, set[str]], tree: dict[str, set[str]]) -> list[str]:
    out = [f"{pkg or 'the root'}/ is not in the layout" for pkg in sorted(set(tree) - set(listed))]
    out += [f"the layout lists {pkg}/, which does not exist" for pkg in sorted(set(listed) - set(tree))]
    for pkg in sorted(set(tree) & set(listed)):
        where = f"{pkg}/" if pkg else ""
        out += [f"{where}{name} is not in the layout" for name in sorted(tree[pkg] - listed[pkg])]
        out += [
            f"the layout lists {where}{name}, which does not exist"
            for name in sorted(listed[pkg] - tree[pkg])
        ]
    return out


def test_the_readme_layout_matches_the_tree():
    """Both ways: every package and module of src/var_lightning/ is in the README's layout, and every file
    the layout names exists where it says."""
    readme = (PACKAGE.parents[1] / "README.md").read_text()
    assert layout_differences(readme_layout(readme), package_files()) == []


def test_the_layout_check_sees_a_missing_and_a_stale_file():
    listed = readme_layout("## Layout\n```\nsrc/\n  data/          a.py, b.py (the b),\n                 c.py\n"
                           "  keys.py        k.py\nconf/  x.py\n```\n")  # fmt: skip
    assert listed == {"data": {"a.py", "b.py", "c.py"}, "": {"keys.py", "k.py"}}
    tree = {"data": {"a.py", "b.py", "d.py"}, "": {"keys.py", "k.py"}, "cli": {"x.py"}}
    assert layout_differences(listed, tree) == [
        "cli/ is not in the layout", "data/d.py is not in the layout", "the layout lists data/c.py, which does not exist"
    ]  # fmt: skip


def test_the_public_names_come_from_the_package_root():
    import var_lightning
    from var_lightning.tokenizer.autoencoder import MultiScaleVQVAE
    from var_lightning.transformer.sampling import sample

    assert var_lightning.MultiScaleVQVAE is MultiScaleVQVAE and var_lightning.sample is sample
    for name in var_lightning.__all__:
        assert getattr(var_lightning, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        var_lightning.nope  # noqa: B018


def test_tests_that_train_live_in_integration():
    """Unit tests stay fast: a test that runs a Trainer (``.fit(``, ``var-train``'s ``train``) is an
    integration test."""
    unit = PACKAGE.parents[1] / "tests" / "unit"
    training = [p.name for p in unit.glob("test_*.py") if p.name != "test_layering.py"
                and re.search(r"\.fit\(|cli\.train import train\b", p.read_text())]  # fmt: skip
    assert not training, f"move these Trainer runs to tests/integration/: {training}"


# the samplers; outside transformer/ one is chosen only through fast_sampling.build_sampler
SAMPLERS = {("var_lightning.transformer.sampling", "sample"), ("var_lightning.transformer.ar", "ar_sample"),
            ("var_lightning.transformer.fast_sampling", "FastSampler")}  # fmt: skip


def sampler_imports(path: Path) -> list[str]:
    return [f"{node.module}.{a.name} (line {node.lineno})" for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.ImportFrom) for a in node.names if (node.module, a.name) in SAMPLERS]  # fmt: skip


def test_a_sampler_is_chosen_in_one_place():
    """Commands, the app, the studies and the training modules get their sampler from build_sampler (fast,
    plain, or the AR baseline's by the network's kind), never by importing a sampler of their own."""
    outside = [p for p in modules() if home(p) not in ("transformer", "__init__")]
    found = {str(p.relative_to(PACKAGE)): sampler_imports(p) for p in outside}
    assert {k: v for k, v in found.items() if v} == {}


def test_the_sampler_check_sees_a_violation(tmp_path):
    bad = tmp_path / "m.py"
    bad.write_text("from var_lightning.transformer.ar import ar_sample\n")
    assert sampler_imports(bad) == ["var_lightning.transformer.ar.ar_sample (line 1)"]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(paths: list[Path]) -> dict[str, set[str]]:
    """Module -> the modules of ours it imports, lazy (function-level) imports included."""
    names = {module_name(p): p for p in paths}
    graph: dict[str, set[str]] = {n: set() for n in names}
    for name, path in names.items():
        for module, _ in imports(path):
            parts = module.split(".")
            while parts and ".".join(parts) not in names:
                parts.pop()
            target = ".".join(parts)
            if target and target not in (name, "var_lightning"):
                graph[name].add(target)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_circle_even_through_lazy_imports():
    """No two of our modules import each other, directly or around a loop, counting imports inside
    functions (a circle a lazy import hides still ties the modules into one)."""
    assert circles(import_graph(modules())) == []


def test_the_circle_check_sees_a_lazy_circle(tmp_path):
    pkg = tmp_path / "var_lightning" / "checkpoints"
    pkg.mkdir(parents=True)
    (pkg / "a.py").write_text("from var_lightning.checkpoints.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from var_lightning.checkpoints.a import g\n")
    graph = {"a": {"b"}, "b": {"a"}}
    assert circles(graph) == [["a", "b"]]
    assert [m for m, _ in imports(pkg / "b.py")] == ["var_lightning.checkpoints.a"]


def test_every_folder_of_code_is_a_package():
    """setuptools' package finder ships only folders with an ``__init__.py``: one without it is missing from
    a wheel (``pip install .``) while an editable install still works."""
    bare = [str(d.relative_to(PACKAGE)) for d in PACKAGE.rglob("*") if d.is_dir() and d.name != "__pycache__"
            and any(d.glob("*.py")) and not (d / "__init__.py").exists()]  # fmt: skip
    assert bare == []


ARCHITECTURE = PACKAGE.parents[1] / "docs" / "architecture.md"


def doc_ranks(text: str) -> dict[str, int]:
    """docs/architecture.md's package table: package or root module (without .py or /) -> rank."""
    out = {}
    for m in re.finditer(r"^\| (\d+) \| ([^|]+) \|", text, re.M):
        for name in re.findall(r"`(\w+)(?:/|\.py)`", m.group(2)):
            out[name] = int(m.group(1))
    return out


def doc_references(text: str) -> list[tuple[str, str | None]]:
    """Every `path.py` or `path.py:name` the page names."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"`([\w/]+\.py)(?::(\w+))?`", text)]


def reference_problem(path: str, name: str | None) -> str | None:
    root = PACKAGE.parents[1]
    if (root / path).is_file():
        file = root / path
    elif path.startswith("var_lightning/") and (PACKAGE.parent / path).is_file():
        file = PACKAGE.parent / path
    elif (PACKAGE / path).is_file():
        file = PACKAGE / path
    else:  # a bare file name is fine when exactly one module has it
        found = [p for p in PACKAGE.rglob(path) if p.is_file()]
        if len(found) != 1:
            return f"{path}: {'no such file' if not found else 'ambiguous, name its package'}"
        file = found[0]
    if name and not re.search(
        rf"^\s*(def|class|async def) {name}\b|^{name}\b\s*[:=]", file.read_text(), re.M
    ):
        return f"{path}:{name}: {file.name} defines no {name}"
    return None


def test_the_architecture_page_is_true():
    """Both ways: its package table gives every package and root module with the rank the layering rules use,
    and every file (and function, class) it names exists."""
    text = ARCHITECTURE.read_text()
    assert doc_ranks(text) == {k: v for k, v in RANKS.items() if k != "__init__"}
    problems = [p for path, name in doc_references(text) if (p := reference_problem(path, name))]
    assert problems == []


def test_the_architecture_check_sees_a_wrong_rank_and_a_stale_name():
    text = "| 1 | `tokenizer/` | x | y |\n| 3 | `data/`, `keys.py` | x | y |\nsee `data/nope.py` and `keys.py:gone`\n"
    assert doc_ranks(text) == {"tokenizer": 1, "data": 3, "keys": 3}
    assert [reference_problem(p, n) for p, n in doc_references(text)] == [
        None, "data/nope.py: no such file", "keys.py:gone: keys.py defines no gone"
    ]  # fmt: skip


def unexplained_lazy_imports(path: Path) -> list[str]:
    """Imports of our own code inside a function with no ``# lazy: <reason>`` comment on the line above
    (or on the import line): a lazy import needs a reason (start time, an optional dependency), since one
    without a reason hides an arrow of the import graph from a reader."""
    lines = path.read_text().splitlines()
    tree = ast.parse("\n".join(lines))
    out = []
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            own = (isinstance(node, ast.ImportFrom) and (node.module or "").startswith("var_lightning")) or (
                isinstance(node, ast.Import) and any(a.name.startswith("var_lightning") for a in node.names)
            )
            if not own:
                continue
            here = [lines[node.lineno - 1], lines[node.lineno - 2] if node.lineno > 1 else ""]
            if not any(re.search(r"#\s*lazy:\s*\w", line) for line in here):
                out.append(f"{path.name}:{node.lineno} ({fn.name})")
    return sorted(set(out))


def test_a_lazy_import_of_our_own_code_says_why():
    found = [p for path in modules() for p in unexplained_lazy_imports(path)]
    assert found == [], "import these at the top, or say why not in a `# lazy: <reason>` comment above"


def test_the_lazy_import_check_sees_one_without_a_reason(tmp_path):
    m = tmp_path / "m.py"
    m.write_text(
        "def f():\n    from var_lightning.keys import closest\n\n\n"
        "def g():\n    # lazy: start time\n    from var_lightning.seeds import batch_seed\n    import json\n"
    )
    assert unexplained_lazy_imports(m) == ["m.py:2 (f)"]
