"""Users' own tasks: importing the modules that register them, so that every verb sees them.

A task lives in the registry of the process that registered it (`opengato.tasks`). A module of
the user's that registers tasks when imported (`register_task`, `register_gym_task`;
`examples/my_gridworld.py` is one) reaches the `opengato` command in one of three ways, all
plain imports:

- `opengato --import mypkg.tasks VERB ...` (anywhere on the command line; repeatable or
  comma-separated; a `path/to/file.py` works too): imported before the verb runs;
- `$OPENGATO_IMPORT`, the same list, imported when the registry is first used: by the command,
  a script, or every rank of a `torchrun` launch;
- an entry point in the `opengato.tasks` group of an installed package (its `pyproject.toml`:
  `[project.entry-points."opengato.tasks"]` then `mine = "mypkg.tasks"`), loaded when the
  registry is first used. It names a module, imported, or a function, called with no arguments.

Worker processes need none of these: they start with a copy of the registry (opengato.workers),
whose factories import the user's module by name when they are unpickled. A module imported by
path has its folder put at the front of `sys.path`, so that workers find it by name as well.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

ENTRY_POINT_GROUP = "opengato.tasks"
IMPORT_ENV = "OPENGATO_IMPORT"


class TaskModuleError(ImportError):
    """A module named to register tasks (--import, $OPENGATO_IMPORT, an entry point) failed."""


def split_modules(spec: str | Iterable[str]) -> list[str]:
    """Module names or paths from comma-separated strings, blanks dropped, order kept.

    >>> split_modules(["mypkg.tasks,other", " more.py "])
    ['mypkg.tasks', 'other', 'more.py']
    """
    items = [spec] if isinstance(spec, str) else list(spec)
    return [m.strip() for item in items for m in item.split(",") if m.strip()]


def import_modules(spec: str | Iterable[str], origin: str = "--import") -> list[ModuleType]:
    """Import each module of `spec` (names like `mypkg.tasks`, or paths of `.py` files); a
    failure raises TaskModuleError naming the module, `origin` (where it was named) and why."""
    return [_import_one(name, origin) for name in split_modules(spec)]


def _import_one(name: str, origin: str) -> ModuleType:
    path = Path(name).expanduser()
    try:
        if name.endswith(".py") or os.sep in name:
            return _import_path(path)
        return importlib.import_module(name)
    except TaskModuleError:
        raise
    except Exception as e:
        raise TaskModuleError(
            f"{origin} {name}: cannot import it ({type(e).__name__}: {e}). Name an importable "
            "module (`mypkg.tasks`, on PYTHONPATH or installed) or the path of a .py file"
        ) from e


def _import_path(path: Path) -> ModuleType:
    """Import a .py file as the module named after it, with its folder first on `sys.path`."""
    if not path.is_file():
        raise FileNotFoundError(f"no file {path}")
    folder, name = str(path.parent.resolve()), path.stem
    if folder not in sys.path:
        sys.path.insert(0, folder)
    module = importlib.import_module(name)
    found = Path(getattr(module, "__file__", "") or "").resolve()
    if found != path.resolve():
        raise TaskModuleError(
            f"{path}: importing it by its name {name!r} gives another module ({found}); "
            "rename the file"
        )
    return module


def load_entry_points() -> list[str]:
    """Load every entry point of the `opengato.tasks` group: import a module, call a function.
    Returns their names; a failing one raises TaskModuleError naming it and its package."""
    loaded = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        package = ep.dist.name if ep.dist is not None else "?"
        try:
            target = ep.load()
            if callable(target) and not isinstance(target, (ModuleType, type)):
                target()
        except Exception as e:
            raise TaskModuleError(
                f"entry point {ep.name!r} = {ep.value!r} of package {package!r} (group "
                f"{ENTRY_POINT_GROUP}) failed: {type(e).__name__}: {e}. Fix or uninstall it"
            ) from e
        loaded.append(ep.name)
    return loaded


def load_user_tasks() -> None:
    """What the registry does on first use, after the built-in suites: the entry points, then
    the modules of `$OPENGATO_IMPORT`."""
    load_entry_points()
    import_modules(os.environ.get(IMPORT_ENV, ""), origin=f"${IMPORT_ENV}:")
