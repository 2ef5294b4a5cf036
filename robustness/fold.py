"""Batch norm folded into the preceding convolution, for evaluation (and `CompiledOrEager`, torch.compile
with a fallback).

In eval mode a batch-norm layer is a fixed per-channel affine map, y = g (z - m) / sqrt(v + e) + b, so
when it reads nothing but a convolution's output it can be multiplied into that convolution's weights
and bias: one layer instead of two in every forward and backward pass of an attack. The result is the
same function up to float rounding (the folded weights are computed in float64, then rounded once). Not bit
for bit: like channels_last, an example at the decision boundary can flip either way (1 in 1,000 in
benchmarks/bench_pgd.py), so it is an option (`prepare_module(..., fold_bn=True)`), off by default.

Left alone, on purpose:
- a model in train mode (batch norm then uses batch statistics, not a fixed map);
- a batch norm without running statistics, or reading anything but a plain convolution's output;
- a convolution whose output is also read elsewhere, or a convolution/batch norm module called twice;
- a model torch.fx cannot trace symbolically, or one with hooks (a traced copy would drop them).
The original module is never modified: folding works on a deep copy.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn

__all__ = ["CompiledOrEager", "Folded", "fold_batchnorm"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass(frozen=True)
class Folded:
    """The module to evaluate (the original where nothing was folded), the batch norms folded into
    their convolutions (by qualified name) and, when the model was left alone, why."""
    module: nn.Module
    folded: tuple[str, ...] = ()
    reason: str | None = None


def _has_hooks(module: nn.Module) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
               or getattr(m, "_backward_pre_hooks", None) for m in module.modules())


def _foldable_pair(conv: nn.Module, bn: nn.Module) -> bool:
    if type(conv) not in _CONVS or type(bn) not in _NORMS:   # exact types: a subclass may do more
        return False
    if bn.running_mean is None or bn.running_var is None or not bn.track_running_stats:
        return False
    dims = {nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d, nn.Conv3d: nn.BatchNorm3d}
    return dims[type(conv)] is type(bn) and bn.num_features == conv.out_channels


@torch.no_grad()
def _fold_into(conv: nn.Module, bn: nn.Module) -> None:
    """conv <- bn(conv(.)), computed in float64 and rounded once to the weights' dtype."""
    w = conv.weight.detach().double()
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach().double()
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(scale)
    shift = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(scale)
    new_bias = (bias - bn.running_mean.double()) * scale + shift
    dtype, rg = conv.weight.dtype, conv.weight.requires_grad
    conv.weight = nn.Parameter((w * scale.view(-1, *([1] * (w.dim() - 1)))).to(dtype), requires_grad=rg)
    conv.bias = nn.Parameter(new_bias.to(dtype), requires_grad=rg)


def fold_batchnorm(module: nn.Module) -> Folded:
    """A copy of `module` with every foldable batch norm multiplied into its convolution (see the module
    docstring for what is left alone); `Folded.module` is `module` itself when nothing was folded."""
    if module.training:
        return Folded(module, reason="the model is in train mode (batch norm uses batch statistics)")
    if _has_hooks(module):
        return Folded(module, reason="the model has hooks, which a traced copy would drop")
    if not any(type(m) in _NORMS for m in module.modules()):
        return Folded(module, reason="no batch norm")
    try:
        import torch.fx as fx
        twin = copy.deepcopy(module)
        gm = fx.symbolic_trace(twin)
    except Exception as e:  # noqa: BLE001 - data-dependent control flow, scripted modules, ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        return Folded(module, reason=f"torch.fx cannot trace it: {first}")
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    folded = []
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        src = node.args[0]
        if not isinstance(src, fx.Node) or src.op != "call_module" or len(src.users) != 1:
            continue
        if calls.get(node.target) != 1 or calls.get(src.target) != 1:
            continue
        bn, conv = gm.get_submodule(node.target), gm.get_submodule(src.target)
        if not _foldable_pair(conv, bn):
            continue
        _fold_into(conv, bn)
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        folded.append(str(node.target))
    if not folded:
        return Folded(module, reason="no batch norm reads only a convolution's output")
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return Folded(gm.eval(), tuple(folded))


class CompiledOrEager(nn.Module):
    """`torch.compile` where it works, the module as it is where it does not. The first call tries the
    compiled module on two of its rows, forward and input gradient (what attacks need); any failure (no C++
    compiler, an op inductor cannot lower) switches to eager for good, the reason kept in `fallback`.

    When it pays (benchmarks/bench_pgd.py, ResNet-20 on this CPU): PGD-10 ran at 0.65x the eager CPU time
    once compiled, but compiling took 40-270 s cold (under load), 2-10 s from inductor's cache; so on a
    fresh machine it pays only for runs of many thousand examples. Same function up to rounding (like
    folding: 1 outcome of 1,000 differed), so it is an option, off by default."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.fallback: str | None = None
        self.__dict__["_compiled"] = None   # not a submodule: its parameters are the module's
        self._tried = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._tried:
            self._tried = True
            try:
                compiled = torch.compile(self.module, dynamic=True)
                probe = x[:2].detach().clone().requires_grad_(True)
                with torch.enable_grad():
                    torch.autograd.grad(compiled(probe).float().sum(), probe)
                self.__dict__["_compiled"] = compiled
            except Exception as e:  # noqa: BLE001 - whatever stops inductor, eager still works
                first = (str(e).strip().splitlines() or [""])[0][:200]
                self.fallback = f"{type(e).__name__}: {first}" if first else type(e).__name__
        compiled = self.__dict__["_compiled"]   # not `or`: truth of a module may call its __len__
        return (compiled if compiled is not None else self.module)(x)
