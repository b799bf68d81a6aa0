"""Where the shipped recipes (hydra YAMLs) and the plugin live, for tools that start or compose training.

One resolver for every tool: an explicit `--config-dir` wins; otherwise the recipes of the installed
package (`mert_fairseq/recipes/`, copied from `configs/pretrain/` into a wheel) or, in a source checkout,
`configs/pretrain/` beside the package. Nothing here depends on the current directory.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # what `common.user_dir` points to
_CANDIDATES = (PACKAGE_DIR / "recipes", PACKAGE_DIR.parent / "configs" / "pretrain")


def recipe_dir(config_dir: Optional[str | os.PathLike] = None) -> Path:
    """The folder of recipe YAMLs: `config_dir` if given (it must exist), else the project's own."""
    if config_dir is not None:
        path = Path(config_dir)
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: config directory not found")
        return path
    for path in _CANDIDATES:
        if path.is_dir():
            return path
    raise FileNotFoundError(f"no recipe folder found (looked in {', '.join(map(str, _CANDIDATES))}); "
                            "pass --config-dir")


def recipe_path(config: str, config_dir: Optional[str | os.PathLike] = None) -> Path:
    """`config` as a YAML path, or the recipe of that name in `recipe_dir(config_dir)`."""
    path = Path(config)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such config file")
        return path
    folder = recipe_dir(config_dir)
    path = folder / f"{config}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.yaml"))
        raise FileNotFoundError(f"{path}: no such recipe (known in {folder}: {', '.join(known)})")
    return path


def package_parent() -> Path:
    """The folder to put on a child process's PYTHONPATH so that it imports this same package."""
    return PACKAGE_DIR.parent


def child_pythonpath(env: Optional[dict] = None, extra: Sequence[str] = ()) -> str:
    """PYTHONPATH for a child process: this package first, then `extra`, then the caller's entries."""
    current = (env if env is not None else os.environ).get("PYTHONPATH", "")
    parts = [str(package_parent()), *extra] + [p for p in current.split(os.pathsep) if p]
    return os.pathsep.join(dict.fromkeys(parts))
