"""The house rules of the package layout, checked on the source (STYLE.md, docs/architecture.md): model code
imports torch, not Lightning, Hydra or torch.distributed; only cli/ imports Hydra; no package imports one above
it; no module grows past the size a reader can hold."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "var_lightning"
# lower first; a package may import its own rank or below, never above
RANKS = {
    "keys": 0, "distributed": 0, "seeds": 0, "hashing": 0, "__init__": 0,
    "tokenizer": 1, "transformer": 1,
    "data": 2, "checkpoints": 2, "scaling": 2,
    "inference": 3,
    "training": 4,
    "evaluation": 5,
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


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_layers(path):
    me = home(path)
    problems = []
    for module, line in imports(path):
        top = module.split(".")[0]
        where = f"{path.relative_to(PACKAGE)}:{line} imports {module}"
        if me in MODEL and (top in LIGHTNING + HYDRA or module.startswith("torch.distributed")):
            problems.append(
                f"{where}: model code is plain torch (collectives through var_lightning.distributed)"
            )
        if top in HYDRA and me != "cli":
            problems.append(f"{where}: only cli/ imports Hydra / OmegaConf")
        if top in LIGHTNING and me in MODEL + ("keys", "distributed", "scaling", "evaluation", "inference"):
            problems.append(f"{where}: Lightning belongs to training, data, callbacks and the entry points")
        other = target_home(module)
        facade = path == PACKAGE / "__init__.py"  # the public names, re-exported lazily from every layer
        if other is not None and other != me and RANKS[other] > RANKS[me] and not facade:
            problems.append(f"{where}: an upward import ({me} is below {other})")
    assert not problems, "\n".join(problems)


def test_no_module_is_too_long_to_read():
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in modules()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"split these (over {MAX_LINES} lines): {long}"


def test_the_layering_check_sees_a_violation(tmp_path):
    """The checks above can fail: an upward and a Lightning import in model code are both found."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import pytorch_lightning as L\nfrom var_lightning.training.wiring import fit_data_to_model\n"
    )
    found = imports(bad)
    assert ("pytorch_lightning", 1) in found and target_home(found[1][0]) == "training"
    assert RANKS["training"] > RANKS["transformer"]


def test_the_readme_layout_matches_the_tree():
    """Every package is in the README's layout section, and every file it names exists where it says."""
    import re

    readme = (PACKAGE.parents[1] / "README.md").read_text()
    block = readme.split("## Layout", 1)[1].split("```", 2)[1]
    listed: dict[str, set[str]] = {}
    current = None
    for line in block.splitlines():
        m = re.match(r"^  (\w+)(/|\.py)\s", line)
        if m:
            current = m.group(1) if m.group(2) == "/" else ""
            listed.setdefault(current, set())
            if m.group(2) == ".py":
                listed[""].add(f"{m.group(1)}.py")
        elif not line.startswith(" " * 17) and not line.startswith("  "):
            current = None  # a top-level folder (conf/, tests/ ...)
        if current is not None:
            listed[current] |= set(re.findall(r"\b(\w+\.py)\b", line.split("  ", 2)[-1]))
    packages = {
        p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists() and p.name != "conf"
    }
    assert packages <= set(listed), f"packages missing from the README layout: {packages - set(listed)}"
    missing = [f"{pkg}/{name}" if pkg else name for pkg, names in listed.items() for name in names
               if not (PACKAGE / pkg / name).is_file() and not (PACKAGE / name).is_file()]  # fmt: skip
    assert not missing, f"the README layout names files that do not exist: {missing}"


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
