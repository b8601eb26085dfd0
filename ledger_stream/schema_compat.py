"""Whether a topic's new JSON Schema breaks what its last released one promised: a pure
comparison of two schema documents, judged by the way the topic's messages travel.

- `in` (commands: other services produce, the ledger reads): every message valid under the
  old schema must stay valid under the new one. A new required field, a field removed from
  an object that refuses unknown ones, a type, enum, variant, pattern, format, range or
  size that narrows, or a changed default break it.
- `out` (journal, results, ...: the ledger writes, other services read): every message the
  new schema allows must be one an old reader handles. A field removed (or renamed), a field
  that was always present becoming optional, a type that widens (to null too), a range or
  size that widens, a pattern or format that changes, a variant or an enum value added, a
  changed default break them. Readers ignore fields they do not know where the old schema
  leaves an object open (the ledger's `out` topics do), and values they do not know of an
  enum marked `x-extensible`; a field added there, or such a value, is compatible.
- `both` (legs, state, outcomes: the ledger writes them and its own workers read them back,
  a newer version reading an older one's records and, during a rolling upgrade, the other
  way round): both rules.

Adding an optional field is compatible in every direction unless old readers refuse unknown
fields (a closed object read in the `out` or `both` direction).

>>> old = {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]}
>>> new = {"type": "object", "properties": {"id": {"type": ["string", "null"]}}}
>>> for change in breaking_changes(old, new, "out"):
...     print(change)
id: field became optional: old readers expect it on every message
id: type widened: may now be null
>>> breaking_changes(old, new, "in")
[]
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

Schema = Mapping[str, Any]
Direction = Literal["in", "out", "both"]
DIRECTIONS: tuple[Direction, ...] = ("in", "out", "both")

# The kinds of break, as the messages name them.
REQUIRED_ADDED = "required field added"
FIELD_REMOVED = "field removed"
BECAME_OPTIONAL = "field became optional"
ADDED_TO_CLOSED = "field added to a closed object"
OBJECT_CLOSED = "object closed"
OBJECT_OPENED = "object opened"
TYPE_CHANGED = "type changed"
TYPE_NARROWED = "type narrowed"
TYPE_WIDENED = "type widened"
ENUM_VALUE_REMOVED = "enum value removed"
ENUM_VALUE_ADDED = "enum value added"
ENUM_IMPOSED = "enum imposed"
ENUM_DROPPED = "enum dropped"
VARIANT_REMOVED = "variant removed"
VARIANT_ADDED = "variant added"
PATTERN_CHANGED = "pattern changed"
FORMAT_CHANGED = "format changed"
RANGE_NARROWED = "range narrowed"
RANGE_WIDENED = "range widened"
SIZE_NARROWED = "size narrowed"
SIZE_WIDENED = "size widened"
DEFAULT_CHANGED = "default changed"
DIRECTION_CHANGED = "direction changed"

_ANY = "any"
_REFERENCES_MAX = 64  # a chain of $ref longer than this is a loop
_MISSING = object()
# Keywords that say what a value is when a schema gives no `type`.
_IMPLIED_TYPES = (
    ("object", ("properties", "additionalProperties", "required", "propertyNames")),
    ("array", ("items", "minItems", "maxItems")),
    ("string", ("pattern", "minLength", "maxLength", "format")),
    ("number", ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")),
)
_SIZES = {
    "string": ("minLength", "maxLength"),
    "array": ("minItems", "maxItems"),
    "object": ("minProperties", "maxProperties"),
}


@dataclass(frozen=True, order=True)
class Break:
    """One breaking change: where in the message (`postings[].debit`, `<type=deposit>.amount`,
    `(key)`; empty for the message itself), what kind (one of the constants above), and
    what changed."""

    path: str
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.path or '(message)'}: {self.kind}: {self.detail}"


def breaking_changes(old: Schema, new: Schema, direction: Direction | None = None) -> list[Break]:
    """Every change from schema document `old` to `new` that breaks producers (`in`),
    readers (`out`) or both (`both`); `direction` defaults to the old document's
    `x-direction`. The record key (`x-key`) and headers (`x-headers`) are compared as
    the value is. An empty list: `new` is compatible."""
    declared = old.get("x-direction")
    chosen = direction or declared
    if chosen not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, not {chosen!r}")
    comparison = _Comparison(old, new, accept=chosen in ("in", "both"), read=chosen != "in")
    if declared is not None and new.get("x-direction") != declared:
        comparison.add("(topic)", DIRECTION_CHANGED, f"{declared} -> {new.get('x-direction')}")
    comparison.compare(old, new, "")
    for part, name in (("x-key", "(key)"), ("x-headers", "(headers)")):
        if part in old or part in new:
            comparison.compare(old.get(part, {}), new.get(part, {}), name)
    return sorted(comparison.breaks)


@dataclass(frozen=True)
class _Leaf:
    """One alternative of a schema, unions flattened and references resolved: the JSON type
    it admits, its enum values (None: any of the type), and its discriminator tag."""

    node: Schema
    json_type: str
    values: frozenset[str] | None = None
    tag: tuple[str, str] | None = None
    extensible: bool = False
    ref: str | None = None  # the definition it comes from, if any


class _Comparison:
    """Walks two schemas side by side. `accept`: the new one must accept every message the
    old one did (producers). `read`: old readers must take every message the new one allows."""

    def __init__(self, old_doc: Schema, new_doc: Schema, accept: bool, read: bool) -> None:
        self.old_doc, self.new_doc = old_doc, new_doc
        self.accept, self.read = accept, read
        self.breaks: set[Break] = set()
        self._walking: set[tuple[str | None, str | None]] = set()

    def add(self, path: str, kind: str, detail: str) -> None:
        self.breaks.add(Break(path, kind, detail))

    def compare(self, old: Schema, new: Schema, path: str) -> None:
        old_leaves = list(_leaves(old, self.old_doc))
        new_leaves = list(_leaves(new, self.new_doc))
        old_types = {leaf.json_type for leaf in old_leaves}
        new_types = {leaf.json_type for leaf in new_leaves}
        lost = sorted(t for t in old_types if not _covers(new_types, t))
        gained = sorted(t for t in new_types if not _covers(old_types, t))
        if not any(_covers(new_types, t) for t in old_types) and not any(
            _covers(old_types, t) for t in new_types
        ):
            self.add(path, TYPE_CHANGED, f"was {_types(old_types)}, now {_types(new_types)}")
            return
        if lost and self.accept:
            self.add(path, TYPE_NARROWED, f"no longer accepts {_types(lost)}")
        if gained and self.read:
            self.add(path, TYPE_WIDENED, f"may now be {_types(gained)}")
        for old_type, new_type in _paired(old_types, new_types):
            self._compare_type(
                [leaf for leaf in old_leaves if leaf.json_type == old_type],
                [leaf for leaf in new_leaves if leaf.json_type == new_type],
                path,
            )

    def _compare_type(self, old: list[_Leaf], new: list[_Leaf], path: str) -> None:
        old_values = _values(old)
        new_values = _values(new)
        extensible = any(leaf.extensible for leaf in old)
        if old_values is not None and new_values is not None:
            removed, added = old_values - new_values, new_values - old_values
            if removed and self.accept:
                self.add(path, ENUM_VALUE_REMOVED, f"{_listed(removed)} no longer accepted")
            if added and self.read and not extensible:
                self.add(path, ENUM_VALUE_ADDED, f"{_listed(added)} may now come")
            return
        if old_values is not None:
            if self.read and not extensible:
                self.add(path, ENUM_DROPPED, f"any {new[0].json_type} may now come")
            return
        if new_values is not None:
            if self.accept:
                self.add(path, ENUM_IMPOSED, f"only {_listed(new_values)} accepted now")
            return
        if any(leaf.tag is not None for leaf in (*old, *new)):
            self._compare_variants(old, new, path)
            return
        # Untagged alternatives of one type (rare) are compared in order.
        for old_leaf, new_leaf in zip(old, new, strict=False):
            self._compare_leaf(old_leaf, new_leaf, path)

    def _compare_variants(self, old: list[_Leaf], new: list[_Leaf], path: str) -> None:
        old_by_tag = {leaf.tag: leaf for leaf in old}
        new_by_tag = {leaf.tag: leaf for leaf in new}
        for tag in old_by_tag.keys() - new_by_tag.keys():
            if self.accept:
                self.add(_variant(path, tag), VARIANT_REMOVED, "no longer accepted")
        for tag in new_by_tag.keys() - old_by_tag.keys():
            if self.read:
                self.add(_variant(path, tag), VARIANT_ADDED, "old readers do not know it")
        for tag in old_by_tag.keys() & new_by_tag.keys():
            self._compare_leaf(old_by_tag[tag], new_by_tag[tag], _variant(path, tag))

    def _compare_leaf(self, old_leaf: _Leaf, new_leaf: _Leaf, path: str) -> None:
        refs = (old_leaf.ref, new_leaf.ref)
        if refs in self._walking:  # a recursive definition, being compared further up
            return
        if refs != (None, None):
            self._walking.add(refs)
        try:
            self._compare_constraints(old_leaf.node, new_leaf.node, old_leaf.json_type, path)
        finally:
            self._walking.discard(refs)

    def _compare_constraints(self, old: Schema, new: Schema, json_type: str, path: str) -> None:
        for keyword, kind in (("pattern", PATTERN_CHANGED), ("format", FORMAT_CHANGED)):
            self._compare_exact(old.get(keyword), new.get(keyword), path, kind)
        if json_type in ("integer", "number"):
            self._compare_range(old, new, path)
        if json_type in _SIZES:
            self._compare_size(old, new, path, *_SIZES[json_type])
        if json_type == "array":
            self.compare(old.get("items", {}), new.get("items", {}), f"{path}[]")
        if json_type == "object":
            self._compare_object(old, new, path)

    def _compare_exact(self, old: Any, new: Any, path: str, kind: str) -> None:
        """A constraint whose every change may refuse an old message (when the new one sets
        it) or surprise an old reader (when the old one set it)."""
        if old == new:
            return
        if (new is not None and self.accept) or (old is not None and self.read):
            self.add(path, kind, f"{old!r} -> {new!r}")

    def _compare_range(self, old: Schema, new: Schema, path: str) -> None:
        self._compare_bounds(
            path,
            [
                *_bound_changes("lower bound", _lower(old), _lower(new), lower=True),
                *_bound_changes("upper bound", _upper(old), _upper(new), lower=False),
            ],
            RANGE_NARROWED,
            RANGE_WIDENED,
        )

    def _compare_size(self, old: Schema, new: Schema, path: str, low: str, high: str) -> None:
        old_low, new_low = _inclusive(old.get(low)), _inclusive(new.get(low))
        old_high, new_high = _inclusive(old.get(high)), _inclusive(new.get(high))
        self._compare_bounds(
            path,
            [
                *_bound_changes(low, old_low, new_low, lower=True),
                *_bound_changes(high, old_high, new_high, lower=False),
            ],
            SIZE_NARROWED,
            SIZE_WIDENED,
        )

    def _compare_bounds(
        self, path: str, changes: list[tuple[bool, str]], narrowed_kind: str, widened_kind: str
    ) -> None:
        for narrowed, detail in changes:
            if narrowed and self.accept:
                self.add(path, narrowed_kind, detail)
            if not narrowed and self.read:
                self.add(path, widened_kind, detail)

    def _compare_object(self, old: Schema, new: Schema, path: str) -> None:
        old_fields, new_fields = old.get("properties", {}), new.get("properties", {})
        old_required, new_required = set(old.get("required", ())), set(new.get("required", ()))
        old_extra = old.get("additionalProperties", True)
        new_extra = new.get("additionalProperties", True)
        for name in sorted(old_fields.keys() - new_fields.keys()):
            field = _field(path, name)
            if self.read:
                self.add(field, FIELD_REMOVED, "old readers read it")
            if self.accept and new_extra is False:
                self.add(field, FIELD_REMOVED, "old messages that carry it are refused")
        for name in sorted(new_fields.keys() - old_fields.keys()):
            self._compare_added(path, name, new_fields[name], name in new_required, old_extra)
        for name in sorted(old_fields.keys() & new_fields.keys()):
            field = _field(path, name)
            if self.accept and name in new_required - old_required:
                self.add(field, REQUIRED_ADDED, "it was optional; old messages may lack it")
            if self.read and name in old_required - new_required:
                self.add(field, BECAME_OPTIONAL, "old readers expect it on every message")
            if name not in old_required | new_required:
                old_default = old_fields[name].get("default", _MISSING)
                new_default = new_fields[name].get("default", _MISSING)
                if old_default != new_default:
                    detail = f"{_shown(old_default)} -> {_shown(new_default)}: an absent field "
                    self.add(field, DEFAULT_CHANGED, detail + "now means another value")
            self.compare(old_fields[name], new_fields[name], field)
        if old_extra is not False and new_extra is False and self.accept:
            self.add(path, OBJECT_CLOSED, "fields it does not name are now refused")
        if old_extra is False and new_extra is not False and self.read:
            self.add(path, OBJECT_OPENED, "fields old readers refuse may now come")
        if old_extra is not False and new_extra is not False:
            self.compare(_schema(old_extra), _schema(new_extra), f"{path}{{}}")
        if "propertyNames" in old or "propertyNames" in new:
            old_names, new_names = old.get("propertyNames", {}), new.get("propertyNames", {})
            self.compare({"type": "string", **old_names}, {"type": "string", **new_names},
                         f"{path}{{key}}")  # fmt: skip

    def _compare_added(
        self, path: str, name: str, schema: Schema, required: bool, old_extra: Any
    ) -> None:
        field = _field(path, name)
        if self.accept and required:
            self.add(field, REQUIRED_ADDED, "old messages lack it")
        if old_extra is False:
            if self.read:
                self.add(field, ADDED_TO_CLOSED, "old readers refuse fields they do not know")
            return
        # The old schema let the name through as an unknown field: old messages may carry
        # it (for producers), old readers take it (for readers), as `additionalProperties`.
        self.compare(_schema(old_extra), schema, field)


def _leaves(
    node: Schema,
    doc: Schema,
    tag_by: str | None = None,
    extensible: bool = False,
    ref: str | None = None,
) -> Iterator[_Leaf]:
    """The alternatives `node` admits, one a JSON type, unions flattened."""
    node, ref = _resolved(node, doc, ref)
    extensible = extensible or bool(node.get("x-extensible"))
    union = node.get("anyOf", node.get("oneOf"))
    if union is not None:
        tag_by = node.get("discriminator", {}).get("propertyName", tag_by)
        for alternative in union:
            yield from _leaves(alternative, doc, tag_by, extensible, ref)
        return
    if "allOf" in node:
        if len(node["allOf"]) != 1:
            raise ValueError(f"allOf with {len(node['allOf'])} schemas is not compared")
        target, ref = _resolved(node["allOf"][0], doc, ref)
        merged = {**target, **{k: v for k, v in node.items() if k != "allOf"}}
        yield from _leaves(merged, doc, tag_by, extensible, ref)
        return
    if "const" in node or "enum" in node:
        values = [node["const"]] if "const" in node else node["enum"]
        by_type: dict[str, set[str]] = {}
        for value in values:
            by_type.setdefault(_json_type(value), set()).add(json.dumps(value, sort_keys=True))
        for json_type, encoded in by_type.items():
            yield _Leaf(node, json_type, frozenset(encoded), extensible=extensible, ref=ref)
        return
    declared = node.get("type")
    types = [declared] if isinstance(declared, str) else declared or [_implied_type(node)]
    for json_type in types:
        tag = _tag(node, doc, tag_by) if json_type == "object" else None
        yield _Leaf(node, json_type, tag=tag, extensible=extensible, ref=ref)


def _resolved(node: Schema, doc: Schema, ref: str | None) -> tuple[Schema, str | None]:
    """`node` with its local `$ref` followed (its sibling keywords kept over the target's),
    and the last reference followed (`ref` when none)."""
    for _ in range(_REFERENCES_MAX):
        if "$ref" not in node:
            return node, ref
        ref = node["$ref"]
        if not ref.startswith("#"):
            raise ValueError(f"only local references are compared, not {ref!r}")
        target: Any = doc
        for part in filter(None, ref[1:].split("/")):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    raise ValueError(f"reference {ref!r} does not end after {_REFERENCES_MAX} steps")


def _tag(node: Schema, doc: Schema, tag_by: str | None) -> tuple[str, str] | None:
    """The discriminator's value in an object alternative of a tagged union."""
    if tag_by is None:
        return None
    field, _ = _resolved(node.get("properties", {}).get(tag_by, {}), doc, None)
    values = [field["const"]] if "const" in field else field.get("enum", [])
    return (tag_by, str(values[0])) if len(values) == 1 else None


def _implied_type(node: Schema) -> str:
    for json_type, keywords in _IMPLIED_TYPES:
        if any(keyword in node for keyword in keywords):
            return json_type
    return _ANY


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _covers(types: set[str], json_type: str) -> bool:
    return _ANY in types or json_type in types or (json_type == "integer" and "number" in types)


def _paired(old_types: set[str], new_types: set[str]) -> list[tuple[str, str]]:
    """The types the two schemas share; an integer and a number match when each side has
    only one of them."""
    pairs = [(t, t) for t in sorted(old_types & new_types)]
    for one, other in (("integer", "number"), ("number", "integer")):
        if {one, other} & old_types == {one} and {one, other} & new_types == {other}:
            pairs.append((one, other))
    return pairs


def _values(leaves: list[_Leaf]) -> frozenset[str] | None:
    """The enum values of one type's alternatives; None when any value of it is allowed."""
    if any(leaf.values is None for leaf in leaves):
        return None
    return frozenset().union(*(leaf.values for leaf in leaves if leaf.values is not None))


Bound = tuple[float, int]  # (value, exclusive): -1 an exclusive upper, 1 an exclusive lower


def _lower(node: Schema) -> Bound | None:
    candidates = [(node["minimum"], 0)] if "minimum" in node else []
    if "exclusiveMinimum" in node:
        candidates.append((node["exclusiveMinimum"], 1))
    return max(candidates) if candidates else None


def _upper(node: Schema) -> Bound | None:
    candidates = [(node["maximum"], 0)] if "maximum" in node else []
    if "exclusiveMaximum" in node:
        candidates.append((node["exclusiveMaximum"], -1))
    return min(candidates) if candidates else None


def _inclusive(value: int | None) -> Bound | None:
    return None if value is None else (value, 0)


def _bound_changes(
    name: str, old: Bound | None, new: Bound | None, lower: bool
) -> list[tuple[bool, str]]:
    """(narrowed, detail) when the bound changed: narrowed when the new one is tighter."""
    if old == new:
        return []
    detail = f"{name} {_bound(old)} -> {_bound(new)}"
    narrowed = old is None or (new is not None and (new > old if lower else new < old))
    return [(narrowed, detail)]


def _bound(bound: Bound | None) -> str:
    if bound is None:
        return "none"
    value, exclusive = bound
    return f"{value} (exclusive)" if exclusive else f"{value}"


def _schema(extra: Any) -> Schema:
    """`additionalProperties` as a schema: true (or absent) admits any value."""
    return {} if extra is True else extra


def _field(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _variant(path: str, tag: tuple[str, str] | None) -> str:
    return f"{path}<untagged>" if tag is None else f"{path}<{tag[0]}={tag[1]}>"


def _types(types: Any) -> str:
    return ", ".join("any value" if t == _ANY else t for t in sorted(types))


def _listed(encoded: frozenset[str]) -> str:
    return ", ".join(sorted(encoded))


def _shown(default: Any) -> str:
    return "no default" if default is _MISSING else json.dumps(default, sort_keys=True)
