"""Loading torch.export archives without running code from them.

`torch.export.load` (torch 2.14) is not safe on untrusted files: weights and constants marked
`use_pickle`, a legacy `data/weights/<model>.pt` file and the old root-level layout are read with
`torch.load(weights_only=False)`; the sample inputs are retried with `weights_only=False` after any
failure; `opaque_obj_*` constants go through `pickle.loads`; `data/aotinductor/` holds compiled libraries
that are loaded; symbolic shapes (`expr_str`) go through `sympy.sympify`, i.e. `eval`; and `guards_code`
strings are pasted into generated Python and `exec`uted by `ExportedProgram.module()`.

So, unless the caller allows unsafe loading, an archive is vetted first and refused (one `UserError`
line) unless it holds only what `torch.export.save` writes for a plain tensor program: an allow-list of
member names, raw (never pickled) weights and constants, sample inputs that load with
`weights_only=True` and hold only tensors and numbers, and shape expressions and guards made only of
numbers, symbol names and a fixed set of arithmetic functions. After loading, every graph node must call an
ATen/prims operator (or an arithmetic builtin) before `.module()` runs anything. `torch.load` is also
held to `weights_only=True` while torch reads the archive, in case a future torch adds a pickle path.
"""
from __future__ import annotations

import ast
import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn as nn

from ..errors import UserError

_FIXED = {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id"}
_MEMBERS = [re.compile(p) for p in (
    r"models/model\.json",
    r"data/weights/model_weights_config\.json", r"data/weights/weight_\d+",
    r"data/constants/model_constants_config\.json", r"data/constants/tensor_\d+",
    r"data/sample_inputs/model\.pt",
    r"extra/[A-Za-z0-9_.\-]+",
)]
_PAYLOAD = {"data/weights/model_weights_config.json": ("data/weights/", re.compile(r"weight_\d+")),
            "data/constants/model_constants_config.json": ("data/constants/", re.compile(r"tensor_\d+"))}

# names a shape expression or guard may use: sympy's arithmetic and torch's sympy functions (what the
# deserializer passes to sympify), symbols, and the guard vocabulary (L['x'].size()[0] ...)
_FUNCS = {"Symbol", "Integer", "Float", "Rational", "Max", "Min", "Eq", "Ne", "Lt", "Le", "Gt", "Ge",
          "StrictLessThan", "StrictGreaterThan", "LessThan", "GreaterThan", "Equality", "Unequality",
          "And", "Or", "Not", "Abs", "Mod", "floor", "ceiling", "Piecewise", "ITE", "sqrt", "Pow", "Mul", "Add",
          "sym_sqrt", "sym_max", "sym_min", "sym_float", "sym_int", "sym_not", "sym_ite"}
_CONSTANTS = {"oo", "zoo", "nan", "true", "false", "pi", "E", "inf", "True", "False", "None"}
_SYMBOL_KW = {"positive", "negative", "integer", "real", "nonnegative", "nonpositive", "finite", "infinite",
              "zero", "nonzero", "even", "odd", "rational", "commutative"}
_SYMBOL = re.compile(r"[a-z]+\d+")
_GUARD_ATTRS = {"size", "stride", "storage_offset", "dim", "numel"}
_MATH_ATTRS = {"isnan", "isinf", "inf", "floor", "ceil", "trunc", "sqrt"}


def _torch_sympy_functions() -> set[str]:
    try:
        import sympy
        from torch.utils._sympy import functions
    except ImportError:
        return set()
    return {n for n, v in vars(functions).items()
            if isinstance(v, type) and issubclass(v, sympy.Basic) and not n.startswith("_")}


class Refused(Exception):
    """Why an archive is not loaded without --unsafe-load."""


def load_export_module(path: str | Path, *, allow_unsafe: bool) -> nn.Module:
    """The graph module of a torch.export archive. Without `allow_unsafe`, only through the vetted path."""
    p = Path(path)
    if allow_unsafe:
        try:
            return torch.export.load(str(p)).module()
        except Exception as e:  # noqa: BLE001
            raise UserError(f"cannot load torch.export model {p}: {_first_line(e)}") from None
    try:
        vet_archive(p)
    except Refused as e:
        raise UserError(f"{p} is a torch.export archive with {e}; loading it could run code from the file "
                        f"(torch.export.load unpickles, evals or execs such parts). Pass --unsafe-load only if "
                        f"you trust its source") from None
    try:
        with _weights_only_loads():
            program = torch.export.load(str(p))
        vet_program(program)
    except Refused as e:
        raise UserError(f"{p} is a torch.export archive with {e}; running it could run code from the file. "
                        f"Pass --unsafe-load only if you trust its source") from None
    except Exception as e:  # noqa: BLE001 - a damaged archive
        raise UserError(f"cannot load torch.export model {p}: {_first_line(e)}") from None
    try:
        return program.module()
    except Exception as e:  # noqa: BLE001
        raise UserError(f"cannot load torch.export model {p}: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}".rstrip(": ")


# ---- before loading: the archive's members ----

def vet_archive(path: Path) -> None:
    """Raise Refused unless the archive holds only what a plain tensor program needs (see module doc)."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            if len(set(names)) != len(names):
                raise Refused("duplicate member names")
            roots = {n.split("/", 1)[0] for n in names}
            if len(roots) != 1 or any("/" not in n for n in names):
                raise Refused("members outside one archive folder (the legacy layout)")
            root = roots.pop() + "/"
            rel = {n[len(root):]: n for n in names}
            for name in rel:
                if name not in _FIXED and not any(m.fullmatch(name) for m in _MEMBERS):
                    raise Refused(f"member {name!r}, which plain exports do not have (pickled objects, "
                                  f"compiled code or a legacy layout)")
            for need in ("archive_format", "models/model.json", "data/sample_inputs/model.pt",
                         "data/weights/model_weights_config.json"):
                if need not in rel:
                    raise Refused(f"no {need}")
            if z.read(rel["archive_format"]).strip() != b"pt2":
                raise Refused("an unknown archive format")
            for config, (folder, pattern) in _PAYLOAD.items():
                if config in rel:
                    _vet_payload_config(z.read(rel[config]), folder, pattern, rel, config)
            _vet_sample_inputs(z.read(rel["data/sample_inputs/model.pt"]))
            _vet_program_json(z.read(rel["models/model.json"]))
    except (zipfile.BadZipFile, OSError, KeyError) as e:
        raise Refused(f"an unreadable zip ({type(e).__name__})") from None


def _vet_payload_config(raw: bytes, folder: str, pattern: re.Pattern, rel: dict[str, str], config: str) -> None:
    try:
        doc = json.loads(raw)
    except ValueError:
        raise Refused(f"an unreadable {config}") from None
    entries = doc.get("config") if isinstance(doc, dict) else None
    if not isinstance(entries, dict):
        raise Refused(f"an unreadable {config}")
    for fqn, entry in entries.items():
        if not isinstance(entry, dict) or entry.get("use_pickle") is not False or not entry.get("tensor_meta"):
            raise Refused(f"{fqn!r} stored as a pickle")
        name = entry.get("path_name")
        if not isinstance(name, str) or not pattern.fullmatch(name) or folder + name not in rel:
            raise Refused(f"{fqn!r} stored as {name!r}, not as raw tensor data")


def _vet_sample_inputs(raw: bytes) -> None:
    try:
        sample = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - torch would retry this with weights_only=False
        raise Refused("sample inputs that need full unpickling") from None
    if not (isinstance(sample, tuple) and len(sample) == 2 and isinstance(sample[0], (tuple, list))
            and isinstance(sample[1], dict)):
        raise Refused("sample inputs of an unknown layout")
    for leaf in _leaves(sample):
        if not isinstance(leaf, (torch.Tensor, bool, int, float, type(None))):
            raise Refused(f"a sample input of type {type(leaf).__name__}")


def _leaves(obj: Any) -> Iterator[Any]:
    if isinstance(obj, (tuple, list)):
        for v in obj:
            yield from _leaves(v)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                yield k
            yield from _leaves(v)
    else:
        yield obj


def _vet_program_json(raw: bytes) -> None:
    try:
        doc = json.loads(raw)
    except ValueError:
        raise Refused("an unreadable models/model.json") from None
    if not isinstance(doc, dict):
        raise Refused("an unreadable models/model.json")
    funcs = _FUNCS | _torch_sympy_functions()
    guards = doc.get("guards_code") or []
    if not isinstance(guards, list):
        raise Refused("guards_code that is not a list")
    for g in guards:
        _vet_expression(g, funcs, guard=True)
    for key, value in _strings(doc):
        if "\r" in value:
            raise Refused("a carriage return in a string (it ends a line of generated code)")
        if key == "expr_str":
            _vet_expression(value, funcs, guard=False)


def _strings(obj: Any, key: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(v, k)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v, key)
    elif isinstance(obj, str):
        yield key, obj


_BINOPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.BitAnd, ast.BitOr,
           ast.BitXor, ast.LShift, ast.RShift)
_UNARY = (ast.UAdd, ast.USub, ast.Not, ast.Invert)
_CMP = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE)


def _vet_expression(text: Any, funcs: set[str], *, guard: bool) -> None:
    """Accept only arithmetic on numbers and symbols (and, in guards, input sizes): what sympify/exec
    then evaluate cannot reach a builtin, an attribute or a string other than a symbol or input name."""
    what = "a guard" if guard else "a shape expression"
    if not isinstance(text, str) or len(text) > 10_000:
        raise Refused(f"{what} that is not a short string")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError):
        raise Refused(f"{what} that is not an expression: {text[:60]!r}") from None

    def bad(node: ast.AST) -> Refused:
        return Refused(f"{what} that is not plain arithmetic ({type(node).__name__}): {text[:60]!r}")

    def check(node: ast.AST) -> None:
        if isinstance(node, ast.Expression):
            check(node.body)
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, str) or not isinstance(node.value, (int, float, bool, type(None))):
                raise bad(node)
        elif isinstance(node, ast.Name):
            if not (node.id in _CONSTANTS or node.id in funcs or _SYMBOL.fullmatch(node.id)):
                raise Refused(f"{what} naming {node.id!r}: {text[:60]!r}")
        elif isinstance(node, ast.BinOp) and isinstance(node.op, _BINOPS):
            check(node.left)
            check(node.right)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, _UNARY):
            check(node.operand)
        elif isinstance(node, ast.BoolOp):
            for v in node.values:
                check(v)
        elif isinstance(node, ast.Compare) and all(isinstance(o, _CMP) for o in node.ops):
            check(node.left)
            for c in node.comparators:
                check(c)
        elif isinstance(node, ast.Call):
            check_call(node)
        elif guard and isinstance(node, ast.Subscript):
            check_subscript(node)
        elif guard and isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                node.value.id == "math" and node.attr in _MATH_ATTRS:
            pass
        else:
            raise bad(node)

    def check_call(node: ast.Call) -> None:
        f = node.func
        if isinstance(f, ast.Name) and f.id in funcs:
            if f.id == "Symbol":
                if not (len(node.args) == 1 and isinstance(node.args[0], ast.Constant)
                        and isinstance(node.args[0].value, str) and _SYMBOL.fullmatch(node.args[0].value)):
                    raise bad(node)
                for kw in node.keywords:
                    if kw.arg not in _SYMBOL_KW or not (isinstance(kw.value, ast.Constant)
                                                        and isinstance(kw.value.value, bool)):
                        raise bad(node)
                return
            if node.keywords:
                raise bad(node)
            for a in node.args:
                check(a)
        elif guard and isinstance(f, ast.Attribute) and f.attr in _GUARD_ATTRS and isinstance(f.value, ast.Subscript):
            check_subscript(f.value)
            for a in node.args:
                check(a)
            if node.keywords:
                raise bad(node)
        elif guard and isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "math" \
                and f.attr in _MATH_ATTRS and not node.keywords:
            for a in node.args:
                check(a)
        else:
            raise bad(node)

    def check_subscript(node: ast.Subscript) -> None:
        """L['x'] (an input by name), L['x'].size()[0], args[0] ..."""
        base, index = node.value, node.slice
        if isinstance(base, ast.Name) and base.id == "L":
            if not (isinstance(index, ast.Constant) and isinstance(index.value, str)
                    and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", index.value)):
                raise bad(node)
            return
        if not (isinstance(index, ast.Constant) and isinstance(index.value, int)):
            raise bad(node)
        if isinstance(base, ast.Subscript):
            check_subscript(base)
        elif isinstance(base, ast.Call):
            check_call(base)
        else:
            raise bad(node)

    check(tree)


# ---- after loading, before `.module()` runs anything: what the graphs call ----

def vet_program(program: Any) -> None:
    import operator

    from torch._ops import HigherOrderOperator, OpOverload
    safe_builtins = {getattr(operator, n) for n in (
        "getitem", "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "neg", "pos", "abs", "eq", "ne",
        "lt", "le", "gt", "ge", "and_", "or_", "xor", "not_", "invert", "lshift", "rshift")}
    import math
    safe_builtins |= {getattr(math, n) for n in ("ceil", "floor", "trunc", "sqrt")}
    safe_builtins |= {getattr(torch, n) for n in ("sym_float", "sym_int", "sym_max", "sym_min", "sym_not",
                                                  "sym_sqrt", "sym_ite", "_assert") if hasattr(torch, n)}

    def ok_op(t: Any) -> bool:
        if isinstance(t, OpOverload):
            return t.namespace in ("aten", "prims")
        if isinstance(t, HigherOrderOperator):
            return True
        try:
            return t in safe_builtins
        except TypeError:
            return False

    for key, rng in (getattr(program, "range_constraints", None) or {}).items():
        for bound in (rng.lower, rng.upper):
            if not (bound.is_number if hasattr(bound, "is_number") else isinstance(bound, (int, float))):
                raise Refused(f"a shape range that is not a number ({bound!r})")
    for gm in program.graph_module.modules():
        graph = getattr(gm, "graph", None)
        if graph is None:
            continue
        for node in graph.nodes:
            if node.op == "placeholder":
                if isinstance(node.meta.get("val"), str):   # pasted into a guard between quotes
                    raise Refused("a string input")
            elif node.op in ("output", "get_attr"):
                pass
            elif node.op == "call_function":
                if not ok_op(node.target):
                    raise Refused(f"a graph that calls {node.target!r}")
            else:
                raise Refused(f"a graph node of kind {node.op}")
            for leaf in _leaves([node.args, dict(node.kwargs)]):
                if callable(leaf) and not isinstance(leaf, (torch.fx.Node, torch.dtype)) and not ok_op(leaf):
                    raise Refused(f"a graph argument {leaf!r}")


# ---- while torch reads the archive ----

class _weights_only_loads:
    """Every torch.load in the block runs with weights_only=True (a call asking for False fails)."""

    def __enter__(self) -> None:
        import pickle
        self.original = original = torch.load

        def guarded(*args: Any, **kwargs: Any) -> Any:
            if kwargs.get("weights_only") is False:
                raise pickle.UnpicklingError("full unpickling refused while vetting a torch.export archive")
            kwargs["weights_only"] = True
            return original(*args, **kwargs)
        torch.load = guarded  # type: ignore[assignment]

    def __exit__(self, *exc: object) -> None:
        torch.load = self.original  # type: ignore[assignment]
