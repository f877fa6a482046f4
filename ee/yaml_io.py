"""YAML as grids and profiles read it: SafeLoader's types, and a key given twice in
one mapping is an error (plain YAML would silently keep the last one), named by its
dotted path and both lines.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping names a key twice; plain YAML would silently keep the last."""

    def __init__(self, key: str, line: int, first_line: int, mark: Any):
        self.key, self.line, self.first_line = key, line, first_line  # key: its dotted path
        super().__init__(None, None, f"duplicate key {key!r}", mark)

    def describe(self) -> str:
        return (f"{self.key}: duplicate key on line {self.line} (first on line {self.first_line}); "
                "each key may appear once")


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping (merges `<<` may override).

    The error names the key by its dotted path (`gpus.a100.mem`) and both lines."""

    def construct_document(self, node: yaml.Node) -> Any:
        self._paths: dict[int, str] = {}
        self._index(node, "", set())
        return super().construct_document(node)

    def _index(self, node: yaml.Node, path: str, done: set[int]) -> None:
        """Each mapping node's dotted path, for messages (aliases: the first path)."""
        if id(node) in done:
            return
        done.add(id(node))
        if isinstance(node, yaml.MappingNode):
            self._paths[id(node)] = path
            for key_node, value_node in node.value:
                name = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
                self._index(value_node, f"{path}.{name}" if path else str(name), done)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._index(item, f"{path}[{i}]", done)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:
                continue  # unhashable: SafeLoader itself reports it
            if first is not None:
                parent = getattr(self, "_paths", {}).get(id(node), "")
                raise DuplicateKeyError(f"{parent}.{key}" if parent else str(key), line, first,
                                        key_node.start_mark)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """YAML text -> data, with SafeLoader's types; DuplicateKeyError on a repeated key."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)


def read_yaml_file(path: Path, error: Callable[[Path, list[str]], Exception]) -> Any:
    """A YAML file's data; `error(path, [problem])` (GridError, ProfileError) is raised
    when the file is unreadable, not YAML, or a key repeats."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(path, [f"cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise error(path, ["cannot read: not UTF-8 text"]) from None
    try:
        return load_yaml(text)
    except DuplicateKeyError as exc:
        raise error(path, [exc.describe()]) from None
    except yaml.YAMLError as exc:
        raise error(path, [f"not valid YAML: {exc}"]) from None
