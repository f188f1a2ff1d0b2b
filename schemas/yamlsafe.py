"""YAML for recipes and stage configs, with alias expansion capped.

A YAML alias re-uses a node, so a few hundred bytes can describe a document of billions of nodes
("billion laughs"). PyYAML shares the node, but validating the data and quoting it in an error
message walk the expanded tree: a 1 KB recipe took 5.6 GB before this cap. :func:`load_yaml`
composes the node graph, counts the nodes of its *expansion* (linear in the distinct nodes) and
refuses a document above :data:`MAX_NODES` before building any Python object.
"""

from __future__ import annotations

from typing import Any

from schemas.errors import ConfigError

#: nodes a recipe may expand to (aliases counted at every use); real recipes have a few hundred
MAX_NODES = 100_000


def _expanded_size(root: Any, limit: int) -> int:
    """Nodes of the tree ``root`` expands to (an aliased node counted at every use), capped at ``limit + 1``."""
    import yaml

    memo: dict[int, int] = {}
    on_path: set[int] = set()

    def size(node: Any) -> int:
        key = id(node)
        if key in memo:
            return memo[key]
        if key in on_path:  # a recursive alias (a node inside itself) expands without end
            return limit + 1
        on_path.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [x for pair in node.value for x in pair]
        else:
            children = []
        for child in children:
            total += size(child)
            if total > limit:
                total = limit + 1
                break
        on_path.discard(key)
        memo[key] = total
        return total

    return size(root)


def load_yaml(text: str, *, where: str, max_nodes: int = MAX_NODES) -> Any:
    """``yaml.safe_load(text)``, refusing documents whose aliases expand past ``max_nodes`` nodes."""
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.YAMLError as exc:
            raise ConfigError(f"{where} is not valid YAML: {exc}", fix="check indentation and quoting") from None
        if node is None:
            return None
        n = _expanded_size(node, max_nodes)
        if n > max_nodes:
            raise ConfigError(f"{where}: the YAML expands to more than {max_nodes:,} nodes through its aliases (&/*)",
                              expected=f"a recipe of at most {max_nodes:,} values once aliases are expanded",
                              fix="write the values out or use fewer nested aliases; a recipe needs no more")
        try:
            return loader.construct_document(node)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{where} is not valid YAML: {exc}", fix="check indentation and quoting") from None
    finally:
        loader.dispose()


__all__ = ["load_yaml", "MAX_NODES"]
