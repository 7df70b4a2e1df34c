"""Reading structured data charrnn did not write itself, with bounded work.

Configs, vocabularies, metrics lines and the contents of checkpoints may come from anyone. Two
things make small inputs expensive, and both are refused here as a `ValueError`:

- **Deep nesting** (`[[[[...]]]]` 100,000 levels deep): the JSON and YAML parsers recurse
  once per level and would die with a RecursionError.
- **Shared references** (YAML anchors and aliases, pickle's memo): a few hundred bytes can
  describe a structure whose expansion (printing it, validating it, copying it) has billions
  of nodes. `check_size` walks a structure the way an expansion would, through every shared
  reference, and stops at a budget of nodes and characters before anything expands it.
"""

from __future__ import annotations

import functools
import json
from typing import Any

MAX_DEPTH = 200  # far more than any config, vocabulary or checkpoint of charrnn nests


def load_json(text: str | bytes) -> Any:
    """json.loads, with too-deep nesting a ValueError (json.JSONDecodeError is one too)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("it nests too deeply to be read") from None


def load_yaml(text: str) -> Any:
    """yaml.safe_load, where every way it can fail is a yaml.YAMLError: too-deep nesting,
    values its constructors cannot build (a 5,000-digit integer, a 30th of February), and a
    key given twice in one mapping (YAML keeps the last silently: a second `data:` section
    would drop the first one's settings)."""
    import yaml

    try:
        return yaml.load(text, Loader=_strict_loader())  # noqa: S506 - a SafeLoader
    except RecursionError:
        raise yaml.YAMLError("it nests too deeply to be read") from None
    except (ValueError, OverflowError) as exc:
        raise yaml.YAMLError(f"a value cannot be read ({exc})") from None


@functools.cache
def _strict_loader() -> type:
    """yaml.SafeLoader refusing a key given twice in one mapping (keys merged in with `<<`
    may still be overridden, as YAML means them to be)."""
    import yaml

    class StrictSafeLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):  # noqa: ANN001, ANN202 - PyYAML's
            seen = set()
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                    continue
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"the key {key_node.value!r} is given twice in one "
                        "mapping", key_node.start_mark)
                seen.add(key_node.value)
            return super().construct_mapping(node, deep)

        # YAML 1.1 reads 017 as octal (15) and 1:30 in base 60 (90): a hidden_size of 017
        # trained 15 units without a word. Read so by no one on purpose.
        def construct_yaml_int(self, node):  # noqa: ANN001, ANN202 - PyYAML's
            digits = node.value.replace("_", "").lstrip("+-")
            _refuse_old_base(node, ":" in digits or (
                len(digits) > 1 and digits[0] == "0" and digits[1].isdigit()))
            return super().construct_yaml_int(node)

        def construct_yaml_float(self, node):  # noqa: ANN001, ANN202 - PyYAML's
            _refuse_old_base(node, ":" in node.value)
            return super().construct_yaml_float(node)

    def _refuse_old_base(node, refused: bool) -> None:  # noqa: ANN001 - a yaml.ScalarNode
        if refused:
            raise yaml.constructor.ConstructorError(
                None, None, f"{node.value} would be read in base 8 or 60 (YAML 1.1); write "
                "it without the leading zero or the colon, or quote it", node.start_mark)

    StrictSafeLoader.add_constructor("tag:yaml.org,2002:int", StrictSafeLoader.construct_yaml_int)
    StrictSafeLoader.add_constructor("tag:yaml.org,2002:float",
                                     StrictSafeLoader.construct_yaml_float)
    return StrictSafeLoader


def check_size(value: Any, *, max_nodes: int, max_chars: int, what: str) -> None:
    """Refuse `value` if expanding it would visit more than `max_nodes` containers and scalars,
    hold more than `max_chars` characters (or bytes) of strings, or nest beyond MAX_DEPTH.

    Shared references are counted each time they are reached, as an expansion would count
    them; tensors and arrays count as one node (their size is their own business).
    """
    nodes, chars = 1, 0  # nodes: every value reached so far, counted when it is reached
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ValueError(f"{what} nests more than {MAX_DEPTH} levels deep")
        if isinstance(item, (str, bytes, bytearray)):
            chars += len(item)
            if chars > max_chars:
                raise ValueError(f"{what} holds more than {max_chars:,} characters of text "
                                 "(counting repeated references each time)")
            continue
        if isinstance(item, dict):
            children = [*item, *item.values()]
        elif isinstance(item, (list, tuple, set, frozenset)):
            children = item
        else:
            continue
        # Counted before they are pushed, so a container of a million references to one
        # object is refused without a million-entry stack.
        nodes += len(children)
        if nodes > max_nodes:
            raise ValueError(f"{what} holds more than {max_nodes:,} values (counting repeated "
                             "references such as YAML aliases each time)")
        stack.extend((child, depth + 1) for child in children)
